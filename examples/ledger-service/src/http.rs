//! Just enough HTTP/1.0 and HTTP/1.1 (RFC 9112) for health checkers, Prometheus, curl and urllib.
//!
//! Requests are parsed from a byte buffer and responses encoded into one, so all of the protocol
//! handling is testable without sockets.

use std::fmt::{self, Write as _};

/// Longest request head (request line and headers) accepted; longer ones get 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent, e.g. `/metrics?x=1`.
    pub target: String,
    /// The target's path: no scheme, authority, query or fragment.
    pub path: String,
    pub version: Version,
    /// Whether the client wants the connection kept open after the response.
    pub keep_alive: bool,
    pub content_length: u64,
    /// A Transfer-Encoding was sent. The service does not decode chunked bodies: it answers 411
    /// and closes the connection, since it cannot find where such a body ends.
    pub chunked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    BadRequestLine,
    BadHeader,
    BadContentLength,
    UnsupportedVersion,
    HeadTooLarge,
}

impl ParseError {
    /// The status code to answer this error with.
    pub fn status(self) -> u16 {
        match self {
            ParseError::HeadTooLarge => 431,
            ParseError::UnsupportedVersion => 505,
            _ => 400,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::BadRequestLine => "malformed request line",
            ParseError::BadHeader => "malformed header field",
            ParseError::BadContentLength => "invalid Content-Length",
            ParseError::UnsupportedVersion => "only HTTP/1.0 and HTTP/1.1 are supported",
            ParseError::HeadTooLarge => "request head too large",
        })
    }
}

/// Parses the request at the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete, otherwise the request and the number of
/// bytes its head took (a body, if any, follows those bytes).
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    // RFC 9112 section 2.2: ignore empty lines before a request line; some clients send an
    // extra CRLF after a request body.
    let skipped = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let rest = &buf[skipped..];
    let head_len = match find_head_end(rest) {
        Some(len) if len <= MAX_HEAD_BYTES => len,
        Some(_) => return Err(ParseError::HeadTooLarge),
        None if rest.len() > MAX_HEAD_BYTES => return Err(ParseError::HeadTooLarge),
        None => return Ok(None),
    };

    // Lines end in CRLF, but a bare LF is accepted too (RFC 9112 section 2.2).
    let mut lines = rest[..head_len]
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let (method, target, version) = parse_request_line(lines.next().unwrap_or_default())?;
    let path = path_of(target)
        .ok_or(ParseError::BadRequestLine)?
        .to_owned();

    let mut close = false;
    let mut keep_alive = false;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    // The head ends with an empty line (and the split yields one more after its LF).
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = parse_header(line)?;
        if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let length = parse_content_length(value)?;
            if content_length.is_some_and(|previous| previous != length) {
                return Err(ParseError::BadContentLength);
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = true;
        }
    }

    let keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive && !close,
    };
    let request = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        path,
        version,
        keep_alive,
        content_length: content_length.unwrap_or(0),
        chunked,
    };
    Ok(Some((request, skipped + head_len)))
}

/// Length of the head up to and including the empty line that ends it, if it is complete.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if byte == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

fn parse_request_line(line: &[u8]) -> Result<(&str, &str, Version), ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::BadRequestLine)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadRequestLine);
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(ParseError::BadRequestLine);
    }
    // Visible ASCII only: this also keeps control characters out of the request log.
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ParseError::BadRequestLine);
    }
    let version = match version {
        "HTTP/1.1" => Version::Http11,
        "HTTP/1.0" => Version::Http10,
        other if other.starts_with("HTTP/") => return Err(ParseError::UnsupportedVersion),
        _ => return Err(ParseError::BadRequestLine),
    };
    Ok((method, target, version))
}

/// The path of a request target in origin form (`/a?b`), absolute form (`http://h/a`) or `*`.
fn path_of(target: &str) -> Option<&str> {
    let origin_form = match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(after_scheme) => match after_scheme.find(['/', '?', '#']) {
            Some(i) if after_scheme[i..].starts_with('/') => &after_scheme[i..],
            _ => "/",
        },
        None => target,
    };
    if origin_form == "*" {
        return Some("*");
    }
    if !origin_form.starts_with('/') {
        return None;
    }
    let end = origin_form.find(['?', '#']).unwrap_or(origin_form.len());
    Some(&origin_form[..end])
}

fn parse_header(line: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(ParseError::BadHeader)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    // Rejecting whitespace in the name also rejects whitespace before the colon and obsolete
    // line folding (a line starting with whitespace), as RFC 9112 section 5 asks of servers.
    if name.is_empty() || !name.iter().copied().all(is_token_byte) {
        return Err(ParseError::BadHeader);
    }
    Ok((name, value.trim_ascii()))
}

/// Parses a Content-Length value; a list of identical values (`5, 5`) is accepted as one.
fn parse_content_length(value: &[u8]) -> Result<u64, ParseError> {
    let mut length = None;
    for item in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return Err(ParseError::BadContentLength);
        }
        let parsed: u64 = std::str::from_utf8(item)
            .ok()
            .and_then(|digits| digits.parse().ok())
            .ok_or(ParseError::BadContentLength)?;
        if length.is_some_and(|previous| previous != parsed) {
            return Err(ParseError::BadContentLength);
        }
        length = Some(parsed);
    }
    length.ok_or(ParseError::BadContentLength)
}

/// `tchar` of RFC 9110 section 5.6.2: the characters of methods and header names.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Headers besides Content-Type, Content-Length, Connection and Server.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status, "application/json", body)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Encodes `response` for the wire.
///
/// Content-Length is always sent, also without a body (HEAD), so that every client can find
/// the end of the message on a kept-alive connection.
pub fn encode_response(
    response: &Response,
    include_body: bool,
    keep_alive: bool,
    version: Version,
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nServer: {}/{}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        response.status,
        reason_phrase(response.status),
        crate::BINARY,
        crate::VERSION,
        response.content_type,
        response.body.len(),
    );
    for (name, value) in &response.headers {
        // Writing into a String cannot fail.
        let _ = write!(head, "{name}: {value}\r\n");
    }
    // HTTP/1.1 connections persist unless closed; HTTP/1.0 ones only when both sides say so.
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    } else if version == Version::Http10 {
        head.push_str("Connection: keep-alive\r\n");
    }
    head.push_str("\r\n");

    let mut bytes = head.into_bytes();
    if include_body {
        bytes.extend_from_slice(&response.body);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_complete(raw: &str) -> (Request, usize) {
        parse_request(raw.as_bytes())
            .expect("valid request")
            .expect("complete request")
    }

    #[test]
    fn parses_http11_get_as_keep_alive() {
        let raw = "GET /live HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n";
        let (request, used) = parse_complete(raw);
        assert_eq!(used, raw.len());
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/live");
        assert_eq!(request.version, Version::Http11);
        assert!(request.keep_alive);
        assert_eq!(request.content_length, 0);
        assert!(!request.chunked);
    }

    #[test]
    fn connection_close_ends_http11_persistence() {
        let (request, _) =
            parse_complete("GET / HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n");
        assert!(!request.keep_alive);
    }

    #[test]
    fn http10_persists_only_when_asked() {
        let (plain, _) = parse_complete("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(plain.version, Version::Http10);
        assert!(!plain.keep_alive);
        let (asked, _) = parse_complete("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n");
        assert!(asked.keep_alive);
    }

    #[test]
    fn incomplete_head_needs_more_bytes() {
        assert_eq!(parse_request(b""), Ok(None));
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r"), Ok(None));
    }

    #[test]
    fn pipelined_requests_are_parsed_one_at_a_time() {
        let raw = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let (first, used) = parse_request(raw).unwrap().unwrap();
        assert_eq!(first.path, "/a");
        let (second, rest) = parse_request(&raw[used..]).unwrap().unwrap();
        assert_eq!(second.path, "/b");
        assert_eq!(used + rest, raw.len());
    }

    #[test]
    fn accepts_bare_lf_and_leading_empty_lines() {
        let raw = "\r\n\nGET /version HTTP/1.1\nHost: x\n\n";
        let (request, used) = parse_complete(raw);
        assert_eq!(request.path, "/version");
        assert_eq!(used, raw.len());
    }

    #[test]
    fn path_drops_query_fragment_and_authority() {
        assert_eq!(
            parse_complete("GET /metrics?x=1 HTTP/1.1\r\n\r\n").0.path,
            "/metrics"
        );
        assert_eq!(parse_complete("GET /a#frag HTTP/1.1\r\n\r\n").0.path, "/a");
        let (absolute, _) = parse_complete("GET http://example:8080/live?q HTTP/1.1\r\n\r\n");
        assert_eq!(absolute.path, "/live");
        assert_eq!(absolute.target, "http://example:8080/live?q");
        assert_eq!(
            parse_complete("GET http://example?q HTTP/1.1\r\n\r\n")
                .0
                .path,
            "/"
        );
        assert_eq!(parse_complete("OPTIONS * HTTP/1.1\r\n\r\n").0.path, "*");
    }

    #[test]
    fn reads_body_framing_headers() {
        let (request, _) = parse_complete("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(request.content_length, 12);
        let (request, _) = parse_complete("POST / HTTP/1.1\r\ncontent-length: 5, 5\r\n\r\n");
        assert_eq!(request.content_length, 5);
        let (request, _) = parse_complete("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(request.chunked);
    }

    #[test]
    fn rejects_malformed_requests() {
        let cases: &[(&str, ParseError)] = &[
            ("GET /\r\n\r\n", ParseError::BadRequestLine),
            ("GET  / HTTP/1.1\r\n\r\n", ParseError::BadRequestLine),
            ("GET / HTTP/1.1 extra\r\n\r\n", ParseError::BadRequestLine),
            ("G(T / HTTP/1.1\r\n\r\n", ParseError::BadRequestLine),
            ("GET live HTTP/1.1\r\n\r\n", ParseError::BadRequestLine),
            ("GET / FTP/1.0\r\n\r\n", ParseError::BadRequestLine),
            ("GET / HTTP/2.0\r\n\r\n", ParseError::UnsupportedVersion),
            ("GET / HTTP/1.1\r\nno colon\r\n\r\n", ParseError::BadHeader),
            ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", ParseError::BadHeader),
            (
                "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
                ParseError::BadHeader,
            ),
            (
                "GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                ParseError::BadContentLength,
            ),
            (
                "GET / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
                ParseError::BadContentLength,
            ),
            (
                "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                ParseError::BadContentLength,
            ),
        ];
        for (raw, expected) in cases {
            assert_eq!(parse_request(raw.as_bytes()), Err(*expected), "{raw:?}");
        }
    }

    #[test]
    fn rejects_oversized_heads_complete_or_not() {
        let long = format!(
            "GET / HTTP/1.1\r\nX-Long: {}\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(
            parse_request(long.as_bytes()),
            Err(ParseError::HeadTooLarge)
        );
        let complete = format!("{long}\r\n");
        assert_eq!(
            parse_request(complete.as_bytes()),
            Err(ParseError::HeadTooLarge)
        );
        assert_eq!(ParseError::HeadTooLarge.status(), 431);
    }

    #[test]
    fn encodes_length_and_connection_headers() {
        let response = Response::text(200, "ok\n").with_header("Allow", "GET, HEAD");
        let keep =
            String::from_utf8(encode_response(&response, true, true, Version::Http11)).unwrap();
        assert!(keep.starts_with("HTTP/1.1 200 OK\r\n"), "{keep}");
        assert!(keep.contains("\r\nContent-Length: 3\r\n"));
        assert!(keep.contains("\r\nAllow: GET, HEAD\r\n"));
        assert!(!keep.contains("Connection:"));
        assert!(keep.ends_with("\r\n\r\nok\n"));

        let close =
            String::from_utf8(encode_response(&response, true, false, Version::Http11)).unwrap();
        assert!(close.contains("\r\nConnection: close\r\n"));

        let old =
            String::from_utf8(encode_response(&response, true, true, Version::Http10)).unwrap();
        assert!(old.contains("\r\nConnection: keep-alive\r\n"));
    }

    #[test]
    fn head_responses_keep_the_length_but_drop_the_body() {
        let response = Response::text(404, "not found\n");
        let encoded =
            String::from_utf8(encode_response(&response, false, true, Version::Http11)).unwrap();
        assert!(encoded.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(encoded.contains("\r\nContent-Length: 10\r\n"));
        assert!(encoded.ends_with("\r\n\r\n"));
    }
}
