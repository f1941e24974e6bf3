//! A TCP forwarder in front of a test server, to make it "die" the way a crashed machine does:
//! open connections are cut and new ones refused, then it can come back on the same address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub struct TcpProxy {
    pub url: String,
    addr: SocketAddr,
    target: SocketAddr,
    inner: Arc<Mutex<Option<JoinSet<()>>>>,
}

impl TcpProxy {
    /// Forwards a new local port to `target_url`'s host and port.
    pub async fn start(target_url: &str) -> Self {
        let target: SocketAddr = url::Url::parse(target_url)
            .unwrap()
            .socket_addrs(|| None)
            .unwrap()[0];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Self {
            url: format!("http://{addr}"),
            addr,
            target,
            inner: Arc::new(Mutex::new(None)),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let mut tasks = JoinSet::new();
        let target = self.target;
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let held = Arc::clone(&connections);
        tasks.spawn(async move {
            // Dropping the accept task's set aborts every connection it forwards.
            let _connections = held;
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                connections.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.inner.lock().unwrap() = Some(tasks);
    }

    /// Cuts every open connection and refuses new ones.
    pub fn kill(&self) {
        if let Some(mut tasks) = self.inner.lock().unwrap().take() {
            tasks.abort_all();
        }
    }

    /// Listens again on the same address.
    pub async fn revive(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}
