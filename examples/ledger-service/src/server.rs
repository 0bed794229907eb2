//! Accept loop and connections: one thread per connection, up to a cap.
//!
//! Every wait is bounded by a short timeout so that a shutdown request (SIGTERM/SIGINT) is
//! noticed within `POLL_INTERVAL`: the accept loop stops accepting, idle connections close,
//! and requests already received are answered before the process exits.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::http::{self, ParseError, Request, Response, Version};
use crate::sys;

/// Connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 128;
/// Longest a thread blocks before looking at the shutdown flag.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a kept-alive connection may sit idle. Shorter than Prometheus' default 15 s scrape
/// interval, so an idle connection closes well before the next scrape could race with it.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Request bodies up to this size are read and handed to the app; larger ones are refused
/// (413) and end the connection.
const MAX_BODY_BYTES: u64 = 64 * 1024;
/// How long to drain unread input after half-closing a connection.
const LINGER: Duration = Duration::from_millis(250);
/// How long shutdown waits for connections to finish their current request.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(750);

/// Serves until shutdown is requested, then waits (briefly) for open connections to finish.
pub fn run(listener: TcpListener, app: &Arc<App>) -> io::Result<()> {
    // poll() can report a connection that is gone (reset by its client) by the time accept()
    // runs; a blocking accept() would then hang and miss the shutdown flag.
    listener.set_nonblocking(true)?;
    let active = Arc::new(AtomicUsize::new(0));

    while !sys::shutdown_requested() {
        if !sys::wait_readable(listener.as_raw_fd(), POLL_INTERVAL)? {
            continue;
        }
        match listener.accept() {
            Ok((stream, _peer)) => spawn_connection(stream, app, &active),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Typically out of file descriptors: say so, and back off rather than spin.
                eprintln!("accept failed: {e}");
                thread::sleep(POLL_INTERVAL);
            }
        }
    }

    // Closing the listener makes new connection attempts fail fast instead of queueing.
    drop(listener);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let left = active.load(Ordering::SeqCst);
    if left > 0 {
        eprintln!("exiting with {left} connection(s) still open");
    }
    Ok(())
}

/// Counts a connection as active for as long as it lives, including when its thread panics.
struct ActiveConnection(Arc<AtomicUsize>);

impl ActiveConnection {
    fn new(active: &Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::SeqCst);
        ActiveConnection(Arc::clone(active))
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn spawn_connection(stream: TcpStream, app: &Arc<App>, active: &Arc<AtomicUsize>) {
    // Only this thread adds connections, so the count cannot grow between check and add.
    if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
        reject_busy(stream);
        return;
    }
    let slot = ActiveConnection::new(active);
    let app = Arc::clone(app);
    let spawned = thread::Builder::new()
        .name("connection".to_owned())
        .spawn(move || {
            let _slot = slot;
            if let Err(e) = serve_connection(stream, &app) {
                if !is_disconnect(&e) {
                    eprintln!("connection error: {e}");
                }
            }
        });
    // On failure the closure is dropped: the stream closes and the slot is released.
    if let Err(e) = spawned {
        eprintln!("cannot start a connection thread: {e}");
    }
}

fn reject_busy(mut stream: TcpStream) {
    let response = Response::text(503, "too many connections\n").with_header("Retry-After", "1");
    let bytes = http::encode_response(&response, true, false, Version::Http11);
    // Best effort, without reading the request: the accept loop must not wait on this client.
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(&bytes);
    eprintln!("connection limit ({MAX_CONNECTIONS}) reached: answered 503");
}

/// Serves the requests of one connection until either side ends it.
fn serve_connection(mut stream: TcpStream, app: &App) -> io::Result<()> {
    // Accepted sockets inherit O_NONBLOCK from the listener on some systems (not Linux).
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL_INTERVAL))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    // Each response goes out in one write; don't let Nagle hold it back.
    stream.set_nodelay(true)?;

    // Bytes received but not yet used: a partial head, or pipelined requests.
    let mut pending = Vec::with_capacity(1024);
    loop {
        let request = match next_request(&mut stream, &mut pending)? {
            Next::Request(request) => request,
            Next::Closed => return Ok(()),
            Next::Invalid(error) => {
                let started = Instant::now();
                let response = Response::text(error.status(), format!("{error}\n"));
                let bytes = http::encode_response(&response, true, false, Version::Http11);
                let written = stream.write_all(&bytes);
                log_request("-", "-", response.status, started.elapsed());
                app.record("-", response.status, started.elapsed());
                written?;
                close_gracefully(stream);
                return Ok(());
            }
        };

        let started = Instant::now();
        let (response, body_read) = match read_body(&mut stream, &mut pending, &request)? {
            Body::Read(body) => (app.handle(&request.method, &request.path, &body), true),
            Body::Refused(response) => (response, false),
        };
        let keep_alive = request.keep_alive && body_read && !sys::shutdown_requested();
        let bytes = http::encode_response(
            &response,
            request.method != "HEAD",
            keep_alive,
            request.version,
        );
        let written = stream.write_all(&bytes);
        let duration = started.elapsed();
        log_request(&request.method, &request.target, response.status, duration);
        app.record(&request.path, response.status, duration);
        written?;
        if !keep_alive {
            close_gracefully(stream);
            return Ok(());
        }
    }
}

enum Next {
    Request(Request),
    Invalid(ParseError),
    Closed,
}

/// Reads until `pending` starts with a complete request head and takes that head out of it.
fn next_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> io::Result<Next> {
    let deadline = Instant::now() + KEEP_ALIVE_IDLE;
    let mut chunk = [0u8; 4096];
    loop {
        match http::parse_request(pending) {
            Ok(Some((request, head_len))) => {
                pending.drain(..head_len);
                return Ok(Next::Request(request));
            }
            Ok(None) => {}
            Err(error) => return Ok(Next::Invalid(error)),
        }
        // Also bounds how long a client may take to send one head.
        if Instant::now() >= deadline {
            return Ok(Next::Closed);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(Next::Closed),
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            // The flag is looked at only when nothing arrives, so a request that is already
            // on its way is still answered during shutdown (with Connection: close).
            Err(e) if is_timeout(&e) => {
                if sys::shutdown_requested() {
                    return Ok(Next::Closed);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

enum Body {
    Read(Vec<u8>),
    /// The body could not be read: the answer to send instead, after which the connection
    /// closes (where the next request starts is unknown).
    Refused(Response),
}

/// Reads the request's body (Content-Length framing only) off `pending` and the stream.
fn read_body(stream: &mut TcpStream, pending: &mut Vec<u8>, request: &Request) -> io::Result<Body> {
    if request.chunked {
        return Ok(Body::Refused(Response::text(
            411,
            "send the body with a Content-Length\n",
        )));
    }
    let length = match usize::try_from(request.content_length) {
        Ok(length) if request.content_length <= MAX_BODY_BYTES => length,
        _ => {
            return Ok(Body::Refused(Response::text(
                413,
                format!("a body is at most {MAX_BODY_BYTES} bytes\n"),
            )))
        }
    };
    let buffered = length.min(pending.len());
    let mut body: Vec<u8> = pending.drain(..buffered).collect();

    let deadline = Instant::now() + WRITE_TIMEOUT;
    let mut chunk = [0u8; 4096];
    while body.len() < length {
        let want = (length - body.len()).min(chunk.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Ok(Body::Refused(Response::text(400, "incomplete body\n"))),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) => {
                if sys::shutdown_requested() {
                    return Ok(Body::Refused(Response::text(503, "shutting down\n")));
                }
                if Instant::now() >= deadline {
                    return Ok(Body::Refused(Response::text(
                        408,
                        "body not received in time\n",
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Body::Read(body))
}

/// Ends a connection without destroying the response just written.
///
/// Closing a socket that still has unread input (an unread body, a pipelined request) makes
/// the kernel send a reset, and a reset can discard the response before the client reads it.
/// So: send FIN first, then read and drop whatever still arrives, briefly.
fn close_gracefully(mut stream: TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// One line per request on stderr, which systemd sends to the journal.
fn log_request(method: &str, target: &str, status: u16, duration: Duration) {
    eprintln!(
        "{method} {target} {status} {:.3}ms",
        duration.as_secs_f64() * 1000.0
    );
}

fn is_timeout(e: &io::Error) -> bool {
    // A read timeout is EAGAIN (WouldBlock) on Unix.
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Clients going away mid-conversation is normal and not worth a log line.
fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}
