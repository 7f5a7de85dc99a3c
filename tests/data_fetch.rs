//! `dpgan data fetch` against a server on 127.0.0.1 serving the development copies: the files
//! arrive verified, a corrupted one is refused without landing under its name, and a missing data
//! set points to the command.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::{binary, data_root};
use flate2::read::GzDecoder;

/// Serves the files of `dir` over HTTP/1.1 on an ephemeral port until the test ends; the base URL.
fn serve(dir: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // The rest of the request head, up to its blank line.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let name = request.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            let response = match std::fs::read(dir.join(&name)) {
                Ok(body) => {
                    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
                    r.extend(body);
                    r
                }
                Err(_) => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    format!("http://127.0.0.1:{port}/")
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

fn fetch(args: &[&str]) -> std::process::Output {
    Command::new(binary()).args(["data", "fetch"]).args(args).output().unwrap()
}

#[test]
fn fetch_verifies_every_file_and_keeps_what_is_there() {
    let source = data_root().join("mnist");
    let mirror = serve(source.clone());
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("mnist");
    let out = fetch(&["mnist", "--dir", &target.to_string_lossy(), "--mirror", &mirror]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("downloaded and verified").count(), 4, "{stdout}");
    for name in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        assert_eq!(gunzip(&target.join(name)), gunzip(&source.join(name)), "{name}");
    }
    // Again: nothing to download.
    let out = fetch(&["mnist", "--dir", &target.to_string_lossy(), "--mirror", &mirror]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("already there and verified").count(), 4);
}

#[test]
fn a_corrupted_file_is_refused_and_never_lands_under_its_name() {
    let source = data_root().join("mnist");
    let corrupted = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), corrupted.path().join(entry.file_name())).unwrap();
    }
    // One label changed, the file re-compressed: a valid gzip of different data.
    let labels = corrupted.path().join("train-labels-idx1-ubyte.gz");
    let mut raw = gunzip(&labels);
    raw[100] = (raw[100] + 1) % 10;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    std::fs::write(&labels, gz.finish().unwrap()).unwrap();

    let mirror = serve(corrupted.path().to_path_buf());
    let dir = tempfile::tempdir().unwrap();
    let out = fetch(&["mnist", "--dir", &dir.path().to_string_lossy(), "--mirror", &mirror]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("train-labels-idx1-ubyte.gz") && err.contains("refused"), "{err}");
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains("train-labels")), "{names:?}");
}

#[test]
fn a_data_set_that_is_not_there_points_to_the_fetch_command() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .env("DPGAN_DATA", empty.path())
        .args(["train", "dp-cgan", "--data", "fashion-mnist", "--out", &empty.path().join("run").to_string_lossy(), "--device", "cpu"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("dpgan data fetch fashion-mnist"), "{err}");
    let out = fetch(&["cifar-10", "--dir", &empty.path().to_string_lossy()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("mnist and fashion-mnist"));
}
