//! TCP forwarding, a connection at a time: how the agent stands in for
//! kube-proxy (node ports) and for the `kubernetes.default` Service (the
//! API server seen from pods).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Listens on `ip:port` (0: any free port), also where `ip` is not yet on
/// an interface: a podman bridge exists only while a container uses it.
pub fn listen(ip: IpAddr, port: u16) -> std::io::Result<TcpListener> {
    let domain = if ip.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if ip.is_ipv4() {
        socket.set_freebind_v4(true)?;
    } else {
        socket.set_freebind_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(ip, port).into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Forwards each connection accepted on `listener` to one of `backends`,
/// round robin, trying the next where one refuses; a connection with no
/// backend to take it is closed at once (as a Service without ready
/// endpoints refuses).
pub fn spawn(listener: TcpListener, backends: watch::Receiver<Vec<SocketAddr>>) -> JoinHandle<()> {
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { continue };
            let candidates = backends.borrow().clone();
            let next = next.clone();
            tokio::spawn(async move {
                let start = next.fetch_add(1, Ordering::Relaxed);
                for i in 0..candidates.len() {
                    let backend = candidates[(start + i) % candidates.len()];
                    if let Ok(mut outbound) = TcpStream::connect(backend).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server(tag: u8) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    while stream.read_exact(&mut byte).await.is_ok() {
                        let _ = stream.write_all(&[tag, byte[0]]).await;
                    }
                });
            }
        });
        addr
    }

    async fn ask(addr: SocketAddr) -> Option<u8> {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(&[7]).await.ok()?;
        let mut answer = [0u8; 2];
        stream.read_exact(&mut answer).await.ok()?;
        assert_eq!(answer[1], 7);
        Some(answer[0])
    }

    #[tokio::test]
    async fn connections_are_spread_over_the_backends_and_skip_the_dead_ones() {
        let (a, b) = (echo_server(1).await, echo_server(2).await);
        // A port nobody listens on: bound, then dropped.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let (tx, rx) = watch::channel(vec![a, dead, b]);
        let listener = listen("127.0.0.1".parse().unwrap(), 0).unwrap();
        let front = listener.local_addr().unwrap();
        let task = spawn(listener, rx);
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(ask(front).await.expect("a backend answers"));
        }
        assert!(seen.contains(&1) && seen.contains(&2), "{seen:?}");

        tx.send(Vec::new()).unwrap();
        assert_eq!(ask(front).await, None, "no backends: the connection is closed");
        tx.send(vec![b]).unwrap();
        assert_eq!(ask(front).await, Some(2));
        task.abort();
    }

    #[test]
    fn an_address_not_on_any_interface_can_be_bound() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            // TEST-NET-3: on no interface of this machine.
            let listener = listen("203.0.113.77".parse().unwrap(), 0).expect("freebind");
            assert_ne!(listener.local_addr().unwrap().port(), 0);
        });
    }
}
