//! JSONL files as an event source: several files merged by `occurred_at` (SPEC §2).
//!
//! Each file is read in order; the merge always takes the earliest head among the files
//! (ties: the earlier file), so a file's own out-of-order lines stay out of order, as they
//! would on a Kafka partition. A line that cannot be parsed is handed on at once.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::event::{self, Event, Reject};

/// One input line, parsed or rejected.
#[derive(Debug)]
pub struct Record {
    /// Index of the file in the source's list.
    pub file: usize,
    /// 1-based line number.
    pub line: u64,
    /// The line as read (invalid UTF-8 replaced), without the newline.
    pub raw: String,
    /// The original bytes, kept only when they are not valid UTF-8 (else `raw` is exact).
    pub raw_bytes: Option<Vec<u8>>,
    /// The event, or why it was rejected.
    pub parsed: Result<Event, Reject>,
}

struct Reader {
    lines: Box<dyn BufRead>,
    line: u64,
    buf: Vec<u8>,
    /// Bytes read so far (for the progress line).
    bytes: u64,
}

impl Reader {
    fn next(&mut self, file: usize) -> io::Result<Option<Record>> {
        loop {
            self.buf.clear();
            let n = self.lines.read_until(b'\n', &mut self.buf)?;
            if n == 0 {
                return Ok(None);
            }
            self.bytes += n as u64;
            self.line += 1;
            while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                self.buf.pop();
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(Record {
                file,
                line: self.line,
                raw: String::from_utf8_lossy(&self.buf).into_owned(),
                raw_bytes: std::str::from_utf8(&self.buf)
                    .is_err()
                    .then(|| self.buf.clone()),
                parsed: event::parse(&self.buf),
            }));
        }
    }
}

/// Merges JSONL files by event time.
pub struct FileSource {
    paths: Vec<PathBuf>,
    readers: Vec<Reader>,
    heads: Vec<Option<Record>>,
    /// Total size of the inputs, when every one is a file.
    size: Option<u64>,
}

impl FileSource {
    /// Opens every file (`-` reads standard input).
    pub fn open(paths: &[PathBuf]) -> io::Result<FileSource> {
        let mut readers = Vec::with_capacity(paths.len());
        let mut size = Some(0u64);
        for p in paths {
            let lines: Box<dyn BufRead> = if p == Path::new("-") {
                size = None;
                Box::new(BufReader::new(io::stdin()))
            } else {
                let f = File::open(p).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot open {}: {e}", p.display()))
                })?;
                let len = f.metadata().map(|m| m.len()).ok();
                size = size.zip(len).map(|(a, b)| a + b);
                Box::new(BufReader::with_capacity(1 << 16, f))
            };
            readers.push(Reader {
                lines,
                line: 0,
                buf: Vec::with_capacity(512),
                bytes: 0,
            });
        }
        let mut src = FileSource {
            paths: paths.to_vec(),
            heads: (0..readers.len()).map(|_| None).collect(),
            readers,
            size,
        };
        for i in 0..src.readers.len() {
            src.heads[i] = src.readers[i].next(i)?;
        }
        Ok(src)
    }

    /// Share of the input read so far (0–1), when the inputs are files.
    pub fn fraction_read(&self) -> Option<f64> {
        let size = self.size.filter(|s| *s > 0)?;
        let read: u64 = self.readers.iter().map(|r| r.bytes).sum();
        Some((read as f64 / size as f64).min(1.0))
    }

    /// The path of file `i`.
    pub fn path(&self, i: usize) -> &Path {
        &self.paths[i]
    }

    /// The next record in merged order, or `None` at the end of every file.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        let mut best: Option<usize> = None;
        for (i, head) in self.heads.iter().enumerate() {
            let Some(rec) = head else { continue };
            let Ok(ev) = &rec.parsed else {
                best = Some(i);
                break;
            };
            let better = match best.and_then(|b| self.heads[b].as_ref()) {
                Some(Record { parsed: Ok(b), .. }) => ev.at < b.at,
                _ => true,
            };
            if better {
                best = Some(i);
            }
        }
        let Some(i) = best else { return Ok(None) };
        let next = self.readers[i].next(i)?;
        Ok(std::mem::replace(&mut self.heads[i], next))
    }
}
