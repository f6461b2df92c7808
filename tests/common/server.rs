//! A small HTTP/1.1 file server on 127.0.0.1 for download tests. Paths choose the behaviour:
//! `/ok/NAME` serves the file (honouring `Range: bytes=N-`), `/missing/NAME` answers 404,
//! `/cut/NAME` closes the first connection half-way through the body, `/slow/NAME` trickles the
//! body over about a second, and `/stall/NAME` sends half the body and then stalls until
//! [`Server::release`] is called.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
}

struct Shared {
    body: Vec<u8>,
    seen: Mutex<Vec<Seen>>,
    cuts: AtomicUsize,
    released: AtomicBool,
    /// Bytes of the body sent so far, over all connections.
    sent: AtomicUsize,
}

pub struct Server {
    port: u16,
    shared: Arc<Shared>,
}

impl Server {
    pub fn start(body: Vec<u8>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            body,
            seen: Mutex::new(Vec::new()),
            cuts: AtomicUsize::new(0),
            released: AtomicBool::new(false),
            sent: AtomicUsize::new(0),
        });
        let accept_shared = shared.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = accept_shared.clone();
                thread::spawn(move || {
                    let _ = handle(stream, &shared);
                });
            }
        });
        Server { port, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Lets stalled responses finish.
    pub fn release(&self) {
        self.shared.released.store(true, Ordering::SeqCst);
    }

    pub fn bytes_sent(&self) -> usize {
        self.shared.sent.load(Ordering::SeqCst)
    }

    /// Waits until at least `bytes` of the body were sent, or panics after `timeout`.
    pub fn wait_for_bytes(&self, bytes: usize, timeout: Duration) {
        let start = Instant::now();
        while self.bytes_sent() < bytes {
            assert!(
                start.elapsed() < timeout,
                "the client did not fetch {bytes} bytes in {timeout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_string());
        }
    }
    shared.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });

    let mode = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if mode == "missing" {
        let body = b"not found";
        write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        return stream.write_all(body);
    }
    let total = shared.body.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n < total);
    let (status, from) = match start {
        Some(from) => ("206 Partial Content", from),
        None => ("200 OK", 0),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n",
        total - from
    )?;
    if start.is_some() {
        write!(
            stream,
            "Content-Range: bytes {from}-{}/{total}\r\n",
            total - 1
        )?;
    }
    write!(stream, "\r\n")?;
    let body = &shared.body[from..];
    let send = |stream: &mut TcpStream, bytes: &[u8]| -> std::io::Result<()> {
        stream.write_all(bytes)?;
        stream.flush()?;
        shared.sent.fetch_add(bytes.len(), Ordering::SeqCst);
        Ok(())
    };
    match mode {
        "cut" if shared.cuts.fetch_add(1, Ordering::SeqCst) == 0 => {
            send(&mut stream, &body[..body.len() / 2])?;
            stream.shutdown(std::net::Shutdown::Both)
        }
        "slow" => {
            let chunks = 20;
            let size = body.len().div_ceil(chunks).max(1);
            for chunk in body.chunks(size) {
                send(&mut stream, chunk)?;
                thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        }
        "stall" if from == 0 => {
            send(&mut stream, &body[..body.len() / 2])?;
            while !shared.released.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(20));
            }
            send(&mut stream, &body[body.len() / 2..])
        }
        _ => send(&mut stream, body),
    }
}
