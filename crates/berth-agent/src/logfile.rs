//! Container log files. containerd's shim hands a container's stdout and stderr to
//! `berth log-driver` (its `binary://` logging), which writes one record per line —
//! `<RFC 3339 time> <stdout|stderr> <F|P> <text>`, the CRI log format — and rotates the file at a
//! size limit, keeping one older file (`<name>.log.1`). The agent's logs API reads them back
//! with `--since`, `--tail` and `--follow`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines longer than this are split into partial (`P`) records.
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One record of a log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u128,
    pub stream: Stream,
    /// The text, with its newline unless the line continues in the next record.
    pub text: Vec<u8>,
}

impl Record {
    /// `2026-11-26T23:23:09.123456789Z stdout F text\n`.
    pub fn encode(&self) -> Vec<u8> {
        let secs = u64::try_from(self.time_ns / 1_000_000_000).unwrap_or(u64::MAX);
        let nanos = u32::try_from(self.time_ns % 1_000_000_000).unwrap_or(0);
        let time = humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::new(secs, nanos));
        let stream = match self.stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let (tag, text) = match self.text.strip_suffix(b"\n") {
            Some(t) => ("F", t),
            None => ("P", self.text.as_slice()),
        };
        let mut out = format!("{time} {stream} {tag} ").into_bytes();
        out.extend_from_slice(text);
        out.push(b'\n');
        out
    }

    /// Parses one line of a log file (without its newline); `None` for a malformed line.
    pub fn decode(line: &[u8]) -> Option<Record> {
        let mut parts = line.splitn(4, |b| *b == b' ');
        let time = std::str::from_utf8(parts.next()?).ok()?;
        let stream = match parts.next()? {
            b"stdout" => Stream::Stdout,
            b"stderr" => Stream::Stderr,
            _ => return None,
        };
        let full = match parts.next()? {
            b"F" => true,
            b"P" => false,
            _ => return None,
        };
        let mut text = parts.next().unwrap_or_default().to_vec();
        if full {
            text.push(b'\n');
        }
        let at = humantime::parse_rfc3339(time).ok()?;
        let time_ns = at.duration_since(UNIX_EPOCH).ok()?.as_nanos();
        Some(Record {
            time_ns,
            stream,
            text,
        })
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The file `path` rotates into.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Appends records to a file, rotating it when it would grow past `max_bytes`.
pub struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

impl Writer {
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            max_bytes,
        })
    }

    pub fn write(&mut self, record: &Record) -> std::io::Result<()> {
        let bytes = record.encode();
        if self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes {
            std::fs::rename(&self.path, rotated(&self.path))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(&bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }
}

/// Copies one stream into the shared writer, a record per line.
fn pump(input: impl Read, stream: Stream, out: &Mutex<Writer>) -> std::io::Result<()> {
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .by_ref()
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let record = Record {
            time_ns: now_ns(),
            stream,
            text: line.clone(),
        };
        out.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .write(&record)?;
    }
}

/// `berth log-driver`: the process containerd's shim starts for a container (`binary://`
/// logging) with the container's stdout on fd 3, stderr on fd 4 and a readiness pipe on fd 5.
/// Runs until both streams end (the container exited).
pub fn run_driver(path: &Path, max_bytes: u64) -> std::io::Result<()> {
    // The descriptors are reached through /proc, so no unsafe code adopts raw fds.
    let stdout = File::open("/proc/self/fd/3")?;
    let stderr = File::open("/proc/self/fd/4")?;
    let writer = Arc::new(Mutex::new(Writer::open(path, max_bytes)?));
    // Tell the shim we are ready.
    OpenOptions::new()
        .write(true)
        .open("/proc/self/fd/5")?
        .write_all(b"r")?;
    let err_writer = writer.clone();
    let errs = std::thread::spawn(move || pump(stderr, Stream::Stderr, &err_writer));
    let out = pump(stdout, Stream::Stdout, &writer);
    let err = errs
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("stderr reader panicked")));
    out.and(err)
}

/// Every record of a container's log (the rotated file first), optionally only those at or
/// after `since_ns`, and only the last `tail` (0: all).
pub fn read(path: &Path, since_ns: u128, tail: usize) -> std::io::Result<(Vec<Record>, u64)> {
    let mut records = Vec::new();
    for (p, required) in [(rotated(path), false), (path.to_owned(), true)] {
        let data = match std::fs::read(&p) {
            Ok(d) => d,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        records.extend(data.split(|b| *b == b'\n').filter_map(Record::decode));
    }
    let offset = std::fs::metadata(path)?.len();
    records.retain(|r| r.time_ns >= since_ns);
    if tail > 0 && records.len() > tail {
        records.drain(..records.len() - tail);
    }
    Ok((records, offset))
}

/// Complete records appended to `path` since `offset`, and the new offset. A file that
/// shrank was rotated: it is read from the start.
pub fn read_new(path: &Path, offset: u64) -> std::io::Result<(Vec<Record>, u64)> {
    let mut data = std::fs::read(path)?;
    let start = if (data.len() as u64) < offset {
        0
    } else {
        offset as usize
    };
    let mut chunk = data.split_off(start);
    let complete = chunk.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    chunk.truncate(complete);
    let records = chunk
        .split(|b| *b == b'\n')
        .filter_map(Record::decode)
        .collect();
    Ok((records, (start + complete) as u64))
}

/// Removes the log directories under `root` of the tasks for which `remove` answers true,
/// among those found there (a task's directory is named by its ID) and last changed before
/// `changed_before`. Answers how many went.
pub fn remove_task_logs(
    root: &Path,
    changed_before: std::time::SystemTime,
    remove: impl Fn(&str) -> bool,
) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(task_id) = name.to_str() else {
            continue;
        };
        if !entry.file_type()?.is_dir() || !remove(task_id) {
            continue;
        }
        match entry.metadata().and_then(|m| m.modified()) {
            Ok(changed) if changed < changed_before => {}
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        removed += usize::from(remove_dir(&entry.path())?);
    }
    Ok(removed)
}

/// Removes the log directories under `root` of `tasks`, those that exist; answers how many
/// went. A name that is not a single path component (empty, `.`, `..`, with a `/`) is refused
/// and nothing is removed for it.
pub fn remove_named_task_logs<'a>(
    root: &Path,
    tasks: impl IntoIterator<Item = &'a str>,
) -> std::io::Result<usize> {
    let mut removed = 0;
    for task_id in tasks {
        if task_id.is_empty() || task_id == "." || task_id == ".." || task_id.contains('/') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{task_id:?} is not a task ID"),
            ));
        }
        removed += usize::from(remove_dir(&root.join(task_id))?);
    }
    Ok(removed)
}

/// Removes `dir` and what it holds; answers false when it was not there.
fn remove_dir(dir: &Path) -> std::io::Result<bool> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let full = Record {
            time_ns: 1_795_733_452_361_925_849,
            stream: Stream::Stderr,
            text: b"hi there\n".to_vec(),
        };
        let encoded = full.encode();
        assert_eq!(
            encoded,
            b"2026-11-26T22:50:52.361925849Z stderr F hi there\n"
        );
        assert_eq!(Record::decode(&encoded[..encoded.len() - 1]), Some(full));
        let partial = Record {
            time_ns: 5,
            stream: Stream::Stdout,
            text: b"no newline".to_vec(),
        };
        let encoded = partial.encode();
        assert_eq!(Record::decode(&encoded[..encoded.len() - 1]), Some(partial));
        assert_eq!(Record::decode(b"garbage"), None);
    }

    #[test]
    fn rotates_and_reads_back_with_since_and_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.log");
        let mut w = Writer::open(&path, 120).expect("open");
        for i in 0..6u128 {
            let text = format!("line {i}\n").into_bytes();
            w.write(&Record {
                time_ns: i * 1000,
                stream: Stream::Stdout,
                text,
            })
            .expect("write");
        }
        assert!(rotated(&path).exists(), "the file rotated at 120 bytes");
        let (all, offset) = read(&path, 0, 0).expect("read");
        let texts: Vec<String> = all
            .iter()
            .map(|r| String::from_utf8_lossy(&r.text).into_owned())
            .collect();
        // One rotation keeps one older file: the oldest lines are gone, the rest in order.
        assert_eq!(texts.last().map(String::as_str), Some("line 5\n"));
        assert!(texts.windows(2).all(|w| w[0] < w[1]));
        let (since, _) = read(&path, 4000, 0).expect("read");
        assert_eq!(since.len(), 2);
        let (tail, _) = read(&path, 0, 1).expect("read");
        assert_eq!(tail[0].text, b"line 5\n");
        w.write(&Record {
            time_ns: 9000,
            stream: Stream::Stderr,
            text: b"late\n".to_vec(),
        })
        .expect("write");
        let (new, _) = read_new(&path, offset).expect("read new");
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].stream, Stream::Stderr);
    }

    #[test]
    fn only_the_chosen_task_log_directories_go() {
        let root = tempfile::tempdir().expect("tempdir");
        for task in ["keep", "go", "running"] {
            std::fs::create_dir_all(root.path().join(task)).expect("mkdir");
            std::fs::write(root.path().join(task).join("app.log"), "x").expect("write");
        }
        std::fs::write(root.path().join("go-file"), "not a task").expect("write");
        let listing = || {
            let mut left: Vec<String> = std::fs::read_dir(root.path())
                .expect("read")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            left.sort();
            left
        };
        // Changed just now: too recent to go.
        let a_minute_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        let removed =
            remove_task_logs(root.path(), a_minute_ago, |t| t.starts_with("go")).expect("sweep");
        assert_eq!(removed, 0);
        assert_eq!(listing(), ["go", "go-file", "keep", "running"]);
        let in_a_minute = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        let removed =
            remove_task_logs(root.path(), in_a_minute, |t| t.starts_with("go")).expect("sweep");
        assert_eq!(removed, 1);
        assert_eq!(listing(), ["go-file", "keep", "running"]);
    }

    #[test]
    fn named_task_log_directories_go_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("logs");
        for task in ["a", "b"] {
            std::fs::create_dir_all(root.join(task)).expect("mkdir");
            std::fs::write(root.join(task).join("app.log"), "x").expect("write");
        }
        assert_eq!(
            remove_named_task_logs(&root, ["a", "gone"]).expect("remove"),
            1
        );
        assert!(!root.join("a").exists());
        for bad in ["", ".", "..", "../logs", "b/app.log"] {
            let e = remove_named_task_logs(&root, [bad]).expect_err(bad);
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad}");
        }
        assert!(root.join("b/app.log").exists());
    }
}
