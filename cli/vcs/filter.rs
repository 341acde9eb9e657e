//! Git's long-running filter process protocol (version 2), server side:
//! `gitattributes(5)`, "Long Running Filter Process". Generic over the
//! streams so that it is tested in memory; the work itself is a
//! [`FilterHandler`]'s.

use std::io::{self, BufRead, Read, Write};

use super::pktline::{self, PktReader, read_text, write_flush, write_text};

/// What the filter does with one file.
pub trait FilterHandler {
    /// Converts the working-tree `input` of `path` into the blob to store.
    fn clean(
        &mut self,
        path: &str,
        input: &mut dyn Read,
        out: &mut dyn Write,
    ) -> Result<(), String>;
    /// Converts the stored blob `input` of `path` into the working-tree file.
    fn smudge(
        &mut self,
        path: &str,
        input: &mut dyn Read,
        out: &mut dyn Write,
    ) -> Result<(), String>;
}

/// A broken conversation with git.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// An I/O error on the pipes.
    #[error("filter protocol: {0}")]
    Io(#[from] io::Error),
    /// Git said something unexpected.
    #[error("filter protocol: {0}")]
    Unexpected(String),
}

fn expect_line(r: &mut impl BufRead, want: &str) -> Result<(), ProtocolError> {
    match read_text(r)? {
        Some(l) if l == want => Ok(()),
        other => Err(ProtocolError::Unexpected(format!(
            "expected `{want}`, got {other:?}"
        ))),
    }
}

fn read_list(r: &mut impl BufRead) -> Result<Vec<String>, ProtocolError> {
    let mut out = Vec::new();
    while let Some(l) = read_text(r)? {
        out.push(l);
    }
    Ok(out)
}

/// Serves git on `input`/`output` until git closes the pipe.
pub fn serve<R: BufRead, W: Write>(
    mut input: R,
    mut output: W,
    handler: &mut dyn FilterHandler,
) -> Result<(), ProtocolError> {
    expect_line(&mut input, "git-filter-client")?;
    let versions = read_list(&mut input)?;
    if !versions.iter().any(|v| v == "version=2") {
        return Err(ProtocolError::Unexpected(format!(
            "git offers no protocol version 2: {versions:?}"
        )));
    }
    write_text(&mut output, "git-filter-server")?;
    write_text(&mut output, "version=2")?;
    write_flush(&mut output)?;
    output.flush()?;
    let offered = read_list(&mut input)?;
    for cap in ["capability=clean", "capability=smudge"] {
        if offered.iter().any(|c| c == cap) {
            write_text(&mut output, cap)?;
        }
    }
    write_flush(&mut output)?;
    output.flush()?;

    loop {
        let mut command = None;
        let mut path = String::new();
        match pktline::read_pkt(&mut input)? {
            None => return Ok(()),
            Some(first) => {
                let mut pkt = first;
                loop {
                    let line = match pkt {
                        pktline::Pkt::Flush => break,
                        pktline::Pkt::Data(d) => String::from_utf8_lossy(&d)
                            .trim_end_matches('\n')
                            .to_owned(),
                    };
                    if let Some(c) = line.strip_prefix("command=") {
                        command = Some(c.to_owned());
                    } else if let Some(p) = line.strip_prefix("pathname=") {
                        path = p.to_owned();
                    }
                    pkt = pktline::read_pkt(&mut input)?.ok_or_else(|| {
                        ProtocolError::Unexpected("input ends in a command".into())
                    })?;
                }
            }
        }
        let mut content = PktReader::new(&mut input);
        let mut out = ContentWriter::new(&mut output);
        let result = match command.as_deref() {
            Some("clean") => handler.clean(&path, &mut content, &mut out),
            Some("smudge") => handler.smudge(&path, &mut content, &mut out),
            other => Err(format!("unsupported filter command {other:?}")),
        };
        content.drain()?;
        match result {
            Ok(()) => out.finish_ok()?,
            Err(message) => {
                eprintln!("git-theta: error: {path}: {message}");
                out.finish_error()?;
            }
        }
        output.flush()?;
    }
}

/// Writes a response's content as packets, sending `status=success` before
/// the first byte, so that an error found before any output is a plain
/// `status=error`.
struct ContentWriter<'a, W: Write> {
    inner: &'a mut W,
    buf: Vec<u8>,
    started: bool,
}

impl<'a, W: Write> ContentWriter<'a, W> {
    fn new(inner: &'a mut W) -> Self {
        ContentWriter {
            inner,
            buf: Vec::with_capacity(pktline::MAX_PAYLOAD),
            started: false,
        }
    }

    fn start(&mut self) -> io::Result<()> {
        if !self.started {
            write_text(self.inner, "status=success")?;
            write_flush(self.inner)?;
            self.started = true;
        }
        Ok(())
    }

    fn emit(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.start()?;
            pktline::write_data(self.inner, &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn finish_ok(mut self) -> io::Result<()> {
        self.emit()?;
        self.start()?;
        write_flush(self.inner)?; // end of content
        write_flush(self.inner) // status unchanged
    }

    fn finish_error(self) -> io::Result<()> {
        if self.started {
            write_flush(self.inner)?;
        }
        write_text(self.inner, "status=error")?;
        write_flush(self.inner)
    }
}

impl<W: Write> Write for ContentWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = pktline::MAX_PAYLOAD - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == pktline::MAX_PAYLOAD {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::pktline::{Pkt, read_pkt, write_data};
    use super::*;

    /// Upper-cases on clean, fails on smudge of "bad".
    struct Upper;

    impl FilterHandler for Upper {
        fn clean(
            &mut self,
            _: &str,
            input: &mut dyn Read,
            out: &mut dyn Write,
        ) -> Result<(), String> {
            let mut s = Vec::new();
            input.read_to_end(&mut s).map_err(|e| e.to_string())?;
            out.write_all(&s.to_ascii_uppercase())
                .map_err(|e| e.to_string())
        }
        fn smudge(
            &mut self,
            path: &str,
            input: &mut dyn Read,
            out: &mut dyn Write,
        ) -> Result<(), String> {
            let mut s = Vec::new();
            input.read_to_end(&mut s).map_err(|e| e.to_string())?;
            if path == "bad" {
                return Err("object missing".into());
            }
            out.write_all(&s).map_err(|e| e.to_string())
        }
    }

    fn request(w: &mut Vec<u8>, command: &str, path: &str, content: &[u8]) {
        write_text(w, &format!("command={command}")).expect("w");
        write_text(w, &format!("pathname={path}")).expect("w");
        write_flush(w).expect("w");
        write_data(w, content).expect("w");
        write_flush(w).expect("w");
    }

    #[test]
    fn handshake_then_clean_and_failing_smudge() {
        let mut input = Vec::new();
        write_text(&mut input, "git-filter-client").expect("w");
        write_text(&mut input, "version=2").expect("w");
        write_flush(&mut input).expect("w");
        for c in ["capability=clean", "capability=smudge", "capability=delay"] {
            write_text(&mut input, c).expect("w");
        }
        write_flush(&mut input).expect("w");
        let big = vec![b'a'; 100_000];
        request(&mut input, "clean", "m.safetensors", &big);
        request(&mut input, "smudge", "bad", b"xyz");

        let mut output = Vec::new();
        serve(io::Cursor::new(input), &mut output, &mut Upper).expect("serve");

        let mut r = io::Cursor::new(output);
        let texts = |r: &mut io::Cursor<Vec<u8>>| read_list(r).expect("list");
        assert_eq!(texts(&mut r), ["git-filter-server", "version=2"]);
        assert_eq!(texts(&mut r), ["capability=clean", "capability=smudge"]);
        assert_eq!(texts(&mut r), ["status=success"]);
        let mut content = Vec::new();
        PktReader::new(&mut r)
            .read_to_end(&mut content)
            .expect("content");
        assert_eq!(content, vec![b'A'; 100_000]);
        assert_eq!(texts(&mut r), Vec::<String>::new(), "status kept");
        assert_eq!(texts(&mut r), ["status=error"]);
        assert_eq!(read_pkt(&mut r).expect("eof"), None::<Pkt>);
    }
}
