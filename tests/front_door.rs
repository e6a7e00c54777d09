//! The README is the front door: its two commands must be what CI runs and must exist.

use std::path::Path;

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The shell commands in the README's "Two commands" section, in order.
fn readme_commands() -> Vec<String> {
    let readme = read("README.md");
    let section = readme
        .split("## Two commands")
        .nth(1)
        .expect("README has a \"Two commands\" section");
    let section = section.split("\n## ").next().unwrap();
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().trim().to_owned())
        .collect()
}

#[test]
fn readme_gives_exactly_a_run_command_and_a_test_command() {
    let cmds = readme_commands();
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert!(cmds[0].starts_with("cargo run"), "{cmds:?}");
}

#[test]
fn ci_runs_the_readme_test_command() {
    let test_cmd = &readme_commands()[1];
    let ci = read(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == test_cmd),
        "`.ci/run` does not run the README's test command `{test_cmd}`"
    );
}

#[test]
fn the_readme_run_command_names_an_example_that_exists() {
    let run = &readme_commands()[0];
    if let Some(name) = run.split("--example ").nth(1) {
        let name = name.split_whitespace().next().unwrap();
        let path = format!("examples/{name}.rs");
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(&path).exists(),
            "{path} missing"
        );
    }
}
