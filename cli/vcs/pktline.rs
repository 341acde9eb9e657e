//! Git's pkt-line framing: a 4-hex-digit length (itself included) then the
//! payload; `0000` is a flush packet.

use std::io::{self, BufRead, Read, Write};

/// Largest payload of one packet.
pub const MAX_PAYLOAD: usize = 65516;

/// One packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Pkt {
    /// `0000`.
    Flush,
    /// A data packet.
    Data(Vec<u8>),
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one packet; `None` at a clean end of input.
pub fn read_pkt(r: &mut impl BufRead) -> io::Result<Option<Pkt>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let text =
        std::str::from_utf8(&len).map_err(|_| invalid(format!("bad pkt-line length {len:?}")))?;
    let n = usize::from_str_radix(text, 16)
        .map_err(|_| invalid(format!("bad pkt-line length `{text}`")))?;
    match n {
        0 => Ok(Some(Pkt::Flush)),
        1..=4 => Err(invalid(format!("unexpected special packet `{text}`"))),
        _ if n - 4 > MAX_PAYLOAD => Err(invalid(format!("pkt-line of {n} bytes is too long"))),
        _ => {
            let mut data = vec![0u8; n - 4];
            r.read_exact(&mut data)?;
            Ok(Some(Pkt::Data(data)))
        }
    }
}

/// Reads a text packet, without its trailing newline; `None` on a flush.
pub fn read_text(r: &mut impl BufRead) -> io::Result<Option<String>> {
    match read_pkt(r)? {
        None => Err(io::ErrorKind::UnexpectedEof.into()),
        Some(Pkt::Flush) => Ok(None),
        Some(Pkt::Data(d)) => {
            let s = String::from_utf8(d).map_err(|_| invalid("non-UTF-8 text packet".into()))?;
            Ok(Some(s.strip_suffix('\n').map(str::to_owned).unwrap_or(s)))
        }
    }
}

/// Writes `data` as one or more packets.
pub fn write_data(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    for part in data.chunks(MAX_PAYLOAD) {
        write!(w, "{:04x}", part.len() + 4)?;
        w.write_all(part)?;
    }
    Ok(())
}

/// Writes a text packet (a newline is added).
pub fn write_text(w: &mut impl Write, line: &str) -> io::Result<()> {
    writeln!(w, "{:04x}{line}", line.len() + 5)
}

/// Writes a flush packet.
pub fn write_flush(w: &mut impl Write) -> io::Result<()> {
    w.write_all(b"0000")
}

/// Reads the payloads of data packets up to the next flush as one stream.
pub struct PktReader<'a, R> {
    inner: &'a mut R,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<'a, R: BufRead> PktReader<'a, R> {
    /// A reader of the packets that follow in `inner`.
    pub fn new(inner: &'a mut R) -> Self {
        PktReader {
            inner,
            buf: Vec::new(),
            pos: 0,
            done: false,
        }
    }

    /// Reads and discards the rest, up to and including the flush.
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }
}

impl<R: BufRead> Read for PktReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            match read_pkt(self.inner)? {
                None => return Err(io::ErrorKind::UnexpectedEof.into()),
                Some(Pkt::Flush) => self.done = true,
                Some(Pkt::Data(d)) => {
                    self.buf = d;
                    self.pos = 0;
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_reads_back() {
        let mut w = Vec::new();
        write_text(&mut w, "version=2").expect("w");
        write_flush(&mut w).expect("w");
        let big = vec![7u8; MAX_PAYLOAD + 10];
        write_data(&mut w, &big).expect("w");
        write_flush(&mut w).expect("w");
        assert!(w.starts_with(b"000eversion=2\n0000"));
        let mut r = io::Cursor::new(w);
        assert_eq!(read_text(&mut r).expect("r").as_deref(), Some("version=2"));
        assert_eq!(read_text(&mut r).expect("r"), None);
        let mut back = Vec::new();
        PktReader::new(&mut r).read_to_end(&mut back).expect("r");
        assert_eq!(back, big);
        assert_eq!(read_pkt(&mut r).expect("eof"), None);
    }

    #[test]
    fn rejects_garbage_lengths() {
        let mut r = io::Cursor::new(b"zzzzhello".to_vec());
        assert!(read_pkt(&mut r).is_err());
        let mut r = io::Cursor::new(b"ffff".to_vec());
        assert!(read_pkt(&mut r).is_err());
    }
}
