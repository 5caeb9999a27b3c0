//! A real HTTP/1.1 server on loopback that serves one file, with fault
//! injection: cut the connection after N body bytes, ignore `Range`, flip a
//! byte, answer slowly, stall, 404, and redirect chains (within the server
//! or to another one).
//!
//! Hand-written on `std::net` on purpose: the faults are about what happens
//! on the wire mid-body, which a well-behaved server library exists to
//! prevent. It logs each request's path and `Range` header for assertions.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server does wrong, adjustable while it runs.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Close the connection after this many body bytes, for the next `cuts` responses.
    pub cut_after: Option<u64>,
    /// How many responses get cut.
    pub cuts: u32,
    /// Answer every request with 200 and the whole file, ignoring `Range`.
    pub ignore_range: bool,
    /// Serve the file with this byte flipped.
    pub flip_byte: Option<u64>,
    /// Sleep this long after every 64 KiB of body.
    pub throttle: Option<Duration>,
    /// `/away` redirects here.
    pub redirect_to: Option<String>,
    /// Read each request, then send nothing for this long (a stalled server).
    pub stall: Option<Duration>,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Request path.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

/// A running server; stops when dropped.
pub struct FileServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Faults to inject.
    pub faults: Arc<Mutex<Faults>>,
    /// Requests seen.
    pub log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl FileServer {
    /// Serve `body` at `/model.gguf`; `/r1` → `/r2` → `/r3` → `/model.gguf`
    /// redirect; anything else is 404.
    pub fn start(body: Vec<u8>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let faults = Arc::new(Mutex::new(Faults::default()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = Arc::new(body);
        let (f, l, s) = (faults.clone(), log.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (body, f, l) = (body.clone(), f.clone(), l.clone());
                        std::thread::spawn(move || {
                            let _ = serve(conn, &body, &f, &l);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FileServer { base, faults, log, stop }
    }

    /// The file's URL.
    pub fn url(&self) -> String {
        format!("{}/model.gguf", self.base)
    }

    /// Change the faults.
    pub fn set(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.faults.lock().unwrap());
    }

    /// Requests so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn serve(
    conn: TcpStream,
    body: &[u8],
    faults: &Mutex<Faults>,
    log: &Mutex<Vec<Logged>>,
) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_owned());
            }
        }
    }
    log.lock().unwrap().push(Logged { path: path.clone(), range: range.clone() });
    let (stall, away) = {
        let f = faults.lock().unwrap();
        (f.stall, f.redirect_to.clone())
    };
    if let Some(d) = stall {
        std::thread::sleep(d);
        return Ok(());
    }
    let mut out = conn;
    let redirect = |to: &str| {
        format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    match path.split('?').next().unwrap_or_default() {
        "/r1" => return out.write_all(redirect("/r2").as_bytes()),
        "/r2" => return out.write_all(redirect("/r3").as_bytes()),
        "/r3" => return out.write_all(redirect("/model.gguf").as_bytes()),
        "/away" if away.is_some() => {
            return out.write_all(redirect(away.as_deref().unwrap_or("/")).as_bytes());
        }
        "/model.gguf" => {}
        _ => {
            return out
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    }
    let f = {
        let mut f = faults.lock().unwrap();
        let snapshot = f.clone();
        if f.cuts > 0 {
            f.cuts -= 1;
        }
        snapshot
    };
    let mut data = body.to_vec();
    if let Some(i) = f.flip_byte {
        data[i as usize] ^= 0x01;
    }
    let total = data.len() as u64;
    let start = match (&range, f.ignore_range) {
        (Some(r), false) => {
            r.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).and_then(|s| s.parse::<u64>().ok())
        }
        _ => None,
    };
    let (head, slice) = match start {
        Some(s) if s < total => (
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{total}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                total - 1,
                total - s
            ),
            &data[s as usize..],
        ),
        Some(_) => (
            format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            &data[..0],
        ),
        None => {
            (format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"), &data[..])
        }
    };
    out.write_all(head.as_bytes())?;
    let limit = match (f.cut_after, f.cuts) {
        (Some(n), c) if c > 0 => (n as usize).min(slice.len()),
        _ => slice.len(),
    };
    for chunk in slice[..limit].chunks(64 << 10) {
        out.write_all(chunk)?;
        if let Some(d) = f.throttle {
            std::thread::sleep(d);
        }
    }
    out.flush()?;
    // A cut: drop the socket without sending the rest.
    Ok(())
}
