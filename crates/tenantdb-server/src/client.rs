//! A minimal blocking HTTP/1.1 client with keep-alive, for the tools that drive a server on
//! loopback (`tenantdb demo`, `tenantdb-bench`): one connection per thread and reused buffers,
//! so a load generator costs the measured server as little CPU as possible on a 2-core machine.

use std::io;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

pub struct HttpClient {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    request: Vec<u8>,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> Self {
        HttpClient {
            addr,
            conn: None,
            request: Vec::with_capacity(1024),
        }
    }

    fn connection(&mut self) -> io::Result<&mut BufReader<TcpStream>> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(self.addr).map_err(|e| {
                io::Error::new(e.kind(), format!("connecting to {}: {e}", self.addr))
            })?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::with_capacity(64 * 1024, stream));
        }
        self.conn
            .as_mut()
            .ok_or_else(|| io::Error::other("the connection was just opened"))
    }

    /// Sends one request and returns the status and body. Reconnects once if the server had
    /// closed the kept-alive connection.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<(u16, Vec<u8>)> {
        self.request.clear();
        write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-length: {}\r\n",
            body.len()
        )?;
        if !body.is_empty() {
            self.request
                .extend_from_slice(b"content-type: application/json\r\n");
        }
        for (name, value) in headers {
            write!(self.request, "{name}: {value}\r\n")?;
        }
        self.request.extend_from_slice(b"\r\n");
        self.request.extend_from_slice(body);
        match self.exchange() {
            Ok(reply) => Ok(reply),
            Err(_) => {
                self.conn = None;
                self.exchange()
            }
        }
    }

    fn exchange(&mut self) -> io::Result<(u16, Vec<u8>)> {
        let request = std::mem::take(&mut self.request);
        let result = (|| {
            let conn = self.connection()?;
            conn.get_mut().write_all(&request)?;
            read_response(conn)
        })();
        self.request = request;
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

fn read_response(conn: &mut BufReader<TcpStream>) -> io::Result<(u16, Vec<u8>)> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                line.clear();
                conn.read_line(&mut line)?;
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            conn.read_exact(&mut body[start..])?;
            line.clear();
            conn.read_line(&mut line)?;
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        conn.read_exact(&mut body)?;
    }
    Ok((status, body))
}
