use sss_host::{Host, HostConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo() {
    let server = Host::new(HostConfig::bind("127.0.0.1:0".parse().unwrap())).unwrap();
    let listener = server.listen("echo", "v1").unwrap();
    let client = Host::new(HostConfig::bind("127.0.0.1:0".parse().unwrap())).unwrap();
    let t = tokio::spawn(async move {
        let mut s = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
        s.shutdown().await.unwrap();
        buf.len()
    });
    let mut s = client.connect(server.eid(), &[server.local_addr()], "echo", "v1").await.unwrap();
    s.write_all(b"hello world").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"hello world");
    assert_eq!(t.await.unwrap(), 11);
}
