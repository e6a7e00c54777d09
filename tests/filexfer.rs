//! The file-transfer demo (`examples/filexfer/`) on real UDP sockets over loopback: files
//! arrive byte for byte, and the receiver refuses what a hostile sender tries (unsafe names,
//! sizes that lie, wrong hashes, overwriting) without writing anything it should not.

#[allow(dead_code)]
#[path = "../examples/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../examples/filexfer/proto.rs"]
mod proto;
#[allow(dead_code)]
#[path = "../examples/filexfer/receiver.rs"]
mod receiver;
#[allow(dead_code)]
#[path = "../examples/filexfer/sender.rs"]
mod sender;
#[allow(dead_code)]
#[path = "../examples/filexfer/session.rs"]
mod session;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use ring::digest::{digest, SHA256};
use sss_host::{Host, HostConfig, Stream};
use tokio::io::AsyncWriteExt;

use proto::{Code, Verdict, MAX_VERDICT_RECORD, PROTOCOL, SERVICE};
use receiver::Inbox;

/// A receiver host serving one session into `inbox`, and a sender connected to it.
struct Rig {
    _sender: Host,
    _receiver: Host,
    session: Stream,
    server: tokio::task::JoinHandle<(usize, usize)>,
}

impl Rig {
    async fn new(inbox: Arc<Inbox>) -> Self {
        let loopback = "127.0.0.1:0".parse().unwrap();
        let receiver = Host::new(HostConfig::bind(loopback)).unwrap();
        let sender = Host::new(HostConfig::bind(loopback)).unwrap();
        let listener = receiver.listen(SERVICE, PROTOCOL).unwrap();
        let server = tokio::spawn(async move {
            let session = listener.accept().await.unwrap();
            session::serve_session(session, inbox, Arc::new(AtomicU64::new(0)), |_| {}).await
        });
        let session = sender
            .connect(
                receiver.eid(),
                &[receiver.loopback_addr()],
                SERVICE,
                PROTOCOL,
            )
            .await
            .unwrap();
        Self {
            _sender: sender,
            _receiver: receiver,
            session,
            server,
        }
    }

    /// Sends `files` the way the demo's sender does.
    async fn send(&self, files: &[sender::Outgoing]) -> Vec<sender::Sent> {
        let results = within(session::send_files(
            &self.session,
            files,
            &Arc::new(session::Progress::default()),
        ))
        .await;
        results.into_iter().map(|r| r.unwrap()).collect()
    }

    /// A hostile sender: any header record, then `body`, then the verdict.
    async fn send_raw(&self, header: &[u8], body: &[u8]) -> Verdict {
        let mut sub = self.session.open_substream().unwrap();
        within(async {
            sub.write_record(header).await.unwrap();
            // The receiver may refuse before the body and drop the stream: what is written
            // then is discarded, not an error.
            let _ = sub.write_all(body).await;
            sub.finish().unwrap();
            let record = sub.read_record(MAX_VERDICT_RECORD).await.unwrap().unwrap();
            Verdict::decode(&record.data).unwrap()
        })
        .await
    }

    /// Ends the session; the receiver's (files ok, files refused).
    async fn finish(mut self) -> (usize, usize) {
        within(session::end_session(&mut self.session))
            .await
            .unwrap();
        within(self.server).await.unwrap()
    }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("no hang")
}

fn sha256(data: &[u8]) -> [u8; 32] {
    digest(&SHA256, data).as_ref().try_into().unwrap()
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    common::Pattern::new(seed).fill(&mut v);
    v
}

/// Everything under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(dir).unwrap().to_owned());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

async fn outgoing(dir: &Path, name: &str, data: &[u8], resume: bool) -> sender::Outgoing {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    sender::prepare(&path, resume).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_files_at_once_arrive_byte_exact_with_matching_hashes() {
    let root = tempfile::tempdir().unwrap();
    let (src, dst) = (root.path().join("src"), root.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let contents: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("one byte", vec![42]),
        ("small.txt", b"hello\n".repeat(20_000)),
        ("big.bin", pattern(1, 6 << 20)),
        ("odd.bin", pattern(2, (3 << 20) + 7)),
        ("ünïcødé ✓.dat", pattern(3, 70_001)),
    ];
    let mut files = Vec::new();
    for (name, data) in &contents {
        files.push(outgoing(&src, name, data, false).await);
    }
    let rig = Rig::new(Inbox::new(&dst, false, u64::MAX)).await;
    let sent = rig.send(&files).await;
    for (s, (name, data)) in sent.iter().zip(&contents) {
        assert_eq!(s.verdict.code, Code::OK, "{name}: {:?}", s.verdict);
        assert_eq!(s.verdict.bytes, data.len() as u64, "{name}");
        let got = std::fs::read(dst.join(name)).unwrap();
        assert!(got == *data, "{name}: bytes differ");
        assert_eq!(sha256(&got), s_header_hash(&files, name), "{name}");
    }
    assert_eq!(rig.finish().await, (contents.len(), 0));
    // No partial files left behind: exactly the files sent.
    assert_eq!(tree(&dst).len(), contents.len(), "{:?}", tree(&dst));
}

fn s_header_hash(files: &[sender::Outgoing], name: &str) -> [u8; 32] {
    files
        .iter()
        .find(|f| f.header.name == name)
        .unwrap()
        .header
        .sha256
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_unsafe_name_is_refused_and_nothing_is_written_outside_the_directory() {
    let root = tempfile::tempdir().unwrap();
    let dst = root.path().join("inbox").join("deeper");
    std::fs::create_dir_all(&dst).unwrap();
    let rig = Rig::new(Inbox::new(&dst, true, u64::MAX)).await;
    let body = b"evil";
    let long = "x".repeat(proto::MAX_NAME + 1);
    let names: Vec<&[u8]> = vec![
        b"../escape",
        b"../../escape",
        b"..",
        b".",
        b"",
        b"/tmp/absolute",
        b"/",
        b"sub/dir",
        b"back\\slash",
        b"..\\escape",
        b"nul\0byte",
        b"bell\x07",
        b"new\nline",
        b".hidden.sss-part",
        &[0xff, 0xfe, b'a'],
        long.as_bytes(),
    ];
    for name in &names {
        let header = proto::encode_header_raw(name, body.len() as u64, &sha256(body), 0);
        let verdict = rig.send_raw(&header, body).await;
        assert_eq!(
            verdict.code,
            Code::UNSAFE_NAME,
            "{:?}: {verdict:?}",
            String::from_utf8_lossy(name)
        );
    }
    // A header whose name length field lies is malformed.
    let mut header = proto::encode_header_raw(b"fine", 4, &sha256(body), 0);
    header.extend_from_slice(b"/../x");
    assert_eq!(rig.send_raw(&header, body).await.code, Code::BAD_HEADER);
    // A header record longer than any valid one is refused without being read whole.
    let huge = proto::encode_header_raw(&[b'a'; 5000], 4, &sha256(body), 0);
    assert_eq!(rig.send_raw(&huge, body).await.code, Code::BAD_HEADER);
    assert_eq!(rig.finish().await, (0, names.len() + 2));
    assert_eq!(
        tree(root.path()),
        [PathBuf::from("inbox"), PathBuf::from("inbox/deeper")],
        "nothing written anywhere"
    );
    // And the rule accepts ordinary names.
    for ok in [
        "report.pdf",
        ".bashrc",
        "a..b",
        "ünïcødé ✓",
        "x".repeat(200).as_str(),
    ] {
        assert!(proto::check_name(ok.as_bytes()).is_ok(), "{ok}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_that_lies_or_a_wrong_hash_is_detected_and_nothing_is_kept() {
    let root = tempfile::tempdir().unwrap();
    let rig = Rig::new(Inbox::new(root.path(), false, 1 << 30)).await;
    let data = pattern(5, 300_000);
    let announce = |name: &str, size: usize, hash: [u8; 32]| {
        proto::encode_header_raw(name.as_bytes(), size as u64, &hash, 0)
    };
    // More bytes than announced: refused as soon as the excess arrives.
    let v = rig
        .send_raw(&announce("more", 100_000, sha256(&data[..100_000])), &data)
        .await;
    assert_eq!(v.code, Code::TOO_MANY_BYTES, "{v:?}");
    assert!(v.bytes <= 100_000, "{v:?}");
    // Fewer.
    let v = rig
        .send_raw(&announce("fewer", data.len(), sha256(&data)), &data[..1000])
        .await;
    assert_eq!(v.code, Code::TOO_FEW_BYTES, "{v:?}");
    assert_eq!(v.bytes, 1000);
    // None at all, announcing some.
    let v = rig.send_raw(&announce("none", 10, sha256(b"")), b"").await;
    assert_eq!(v.code, Code::TOO_FEW_BYTES, "{v:?}");
    // The right size with other bytes.
    let mut other = data.clone();
    other[123_456] ^= 1;
    let v = rig
        .send_raw(&announce("flipped", data.len(), sha256(&data)), &other)
        .await;
    assert_eq!(v.code, Code::HASH_MISMATCH, "{v:?}");
    // Larger than the receiver takes.
    let v = rig
        .send_raw(&announce("huge", usize::MAX, [0; 32]), b"")
        .await;
    assert_eq!(v.code, Code::TOO_LARGE, "{v:?}");
    assert_eq!(rig.finish().await, (0, 5));
    assert!(tree(root.path()).is_empty(), "{:?}", tree(root.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_file_is_never_overwritten_unless_the_receiver_allows_it() {
    let root = tempfile::tempdir().unwrap();
    let (src, dst) = (root.path().join("src"), root.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(dst.join("keep.txt"), b"original").unwrap();
    let file = outgoing(&src, "keep.txt", b"replacement", false).await;

    let rig = Rig::new(Inbox::new(&dst, false, u64::MAX)).await;
    let sent = rig.send(std::slice::from_ref(&file)).await;
    assert_eq!(sent[0].verdict.code, Code::EXISTS);
    assert_eq!(rig.finish().await, (0, 1));
    assert_eq!(std::fs::read(dst.join("keep.txt")).unwrap(), b"original");

    let rig = Rig::new(Inbox::new(&dst, true, u64::MAX)).await;
    let sent = rig.send(&[file]).await;
    assert_eq!(sent[0].verdict.code, Code::OK);
    assert_eq!(rig.finish().await, (1, 0));
    assert_eq!(std::fs::read(dst.join("keep.txt")).unwrap(), b"replacement");
    assert_eq!(tree(&dst), [PathBuf::from("keep.txt")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_transfer_resumes_where_the_partial_file_ends() {
    let root = tempfile::tempdir().unwrap();
    let (src, dst) = (root.path().join("src"), root.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let data = pattern(9, 3 << 20);
    let file = outgoing(&src, "big.bin", &data, true).await;
    // What an interrupted transfer left: the first MiB.
    std::fs::write(dst.join(".big.bin.sss-part"), &data[..1 << 20]).unwrap();
    let rig = Rig::new(Inbox::new(&dst, false, u64::MAX)).await;
    let sent = rig.send(std::slice::from_ref(&file)).await;
    assert_eq!(sent[0].verdict.code, Code::OK, "{:?}", sent[0].verdict);
    assert_eq!(sent[0].offset, 1 << 20);
    assert_eq!(sent[0].sent, (2 << 20) as u64);
    assert!(std::fs::read(dst.join("big.bin")).unwrap() == data);

    // A partial file with other bytes: the hash catches it, and it is removed.
    let other = outgoing(&src, "other.bin", &data, true).await;
    std::fs::write(dst.join(".other.bin.sss-part"), vec![0u8; 1000]).unwrap();
    let sent = rig.send(&[other]).await;
    assert_eq!(sent[0].verdict.code, Code::HASH_MISMATCH);
    assert_eq!(rig.finish().await, (1, 1));
    assert_eq!(tree(&dst), [PathBuf::from("big.bin")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_transfer_leaves_nothing_unless_it_can_be_resumed() {
    let root = tempfile::tempdir().unwrap();
    let rig = Rig::new(Inbox::new(root.path(), false, u64::MAX)).await;
    let data = pattern(11, 1 << 20);
    for (name, flags) in [("plain.bin", 0), ("resumable.bin", proto::FLAG_RESUME)] {
        let mut sub = rig.session.open_substream().unwrap();
        let header =
            proto::encode_header_raw(name.as_bytes(), data.len() as u64, &sha256(&data), flags);
        within(async {
            sub.write_record(&header).await.unwrap();
            if flags != 0 {
                let offset = sub.read_record(MAX_VERDICT_RECORD).await.unwrap().unwrap();
                assert_eq!(proto::decode_offset(&offset.data), Some(0));
            }
            sub.write_all(&data[..300_000]).await.unwrap();
            // Let the receiver take the bytes, then give up on the file.
            tokio::time::sleep(Duration::from_millis(200)).await;
            sub.reset(0x100).unwrap();
        })
        .await;
    }
    assert_eq!(rig.finish().await, (0, 2));
    assert_eq!(
        tree(root.path()),
        [PathBuf::from(".resumable.bin.sss-part")]
    );
    let part = std::fs::read(root.path().join(".resumable.bin.sss-part")).unwrap();
    // What arrived before the reset (all of it, unless the machine is very slow).
    assert!(
        part.len() <= 300_000 && data.starts_with(&part),
        "the partial file holds a prefix of the body: {} bytes",
        part.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_sent_with_a_large_one_does_not_wait_for_it() {
    let root = tempfile::tempdir().unwrap();
    let (src, dst) = (root.path().join("src"), root.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    // The large file goes first; each has its own substream, so the small one's bytes and
    // verdict are not queued behind the large one's.
    let files = [
        outgoing(&src, "large.bin", &pattern(21, 32 << 20), false).await,
        outgoing(&src, "small.txt", b"a short note", false).await,
    ];
    let rig = Rig::new(Inbox::new(&dst, false, u64::MAX)).await;
    let sent = rig.send(&files).await;
    assert!(sent.iter().all(sender::Sent::ok), "{sent:?}");
    assert!(
        sent[1].elapsed < sent[0].elapsed,
        "the small file's verdict came after {:?}, the large file's after {:?}",
        sent[1].elapsed,
        sent[0].elapsed
    );
    assert_eq!(rig.finish().await, (2, 0));
}
