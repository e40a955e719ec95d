//! Performance at real sizes (issue 13; run: `cargo bench --bench scale`).
//!
//! One leaf of 10 M rows (`SLEEPER_BENCH_TOTAL_ROWS`) laid out as Sleeper lays it out: K sorted
//! files of the leaf's partition (an un-compacted leaf has many), a 16-char string row key, an
//! i64 sort key and three values, zstd, dictionary off, written with row groups of the table's
//! `sleeper.table.parquet.rowgroup.rows.max`, which the export also writes. Layouts: row groups
//! of 100 k and 1 M rows; K = 8, 32, 128 files at the same total rows. Every variant runs in its
//! own process (median of `SLEEPER_BENCH_RUNS` runs, default 3), and the run prints its time,
//! peak RSS and the ratios issue 13 sets targets for. `--variant NAME --runs N` runs one.
//!
//! Variants are named `<engine>-<threads>-k<files>-rg<rows>[-s3]`: `ours` is the leaf export,
//! `datafusion` is DataFusion's own ordered merge and Parquet sink over the same files
//! (`CREATE EXTERNAL TABLE … WITH ORDER`, `COPY (… ORDER BY key, timestamp)`). `-s3` variants
//! read the table from and write to a disk-backed local S3 server, s3s-fs (install it with
//! `cargo install s3s-fs@0.14.1 --locked --features binary`; without it they are left out),
//! which the bench starts on 127.0.0.1; there `transfer` is the same bytes moved with plain
//! requests, a whole-file GET per input file and one PUT of as many bytes, and each variant's
//! requests, the server's CPU time and the time it takes to complete a multipart upload (s3s-fs
//! copies the parts into one file before it answers) are counted.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{env_number, measure, output_dir, peak_rss_reset, print_result, runtime};
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload};
use sleeper_export::leaf::{run_leaf_query, ExportOptions};
use sleeper_export::model::{PartitionTree, TableProperties};
use sleeper_export::query::split_into_leaf_queries;
use sleeper_export::storage::{Location, Stores};
use sleeper_export::table::SleeperTable;
use sleeper_export::tablegen::{RowStyle, TableWriter};

/// The local S3 server's buckets: the tables, and the exports (emptied after each run).
const TABLE_BUCKET: &str = "scale";
const OUTPUT_BUCKET: &str = "scale-out";

#[derive(Debug, Clone, Copy)]
struct Layout {
    files: usize,
    row_group_rows: usize,
    s3: bool,
}

impl Layout {
    fn name(self) -> String {
        let rows = match self.row_group_rows {
            n if n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
            n if n % 1_000 == 0 => format!("{}k", n / 1_000),
            n => n.to_string(),
        };
        let s3 = if self.s3 { "-s3" } else { "" };
        format!("k{}-rg{rows}{s3}", self.files)
    }

    fn parse(name: &str) -> Option<Self> {
        let (name, s3) = match name.strip_suffix("-s3") {
            Some(name) => (name, true),
            None => (name, false),
        };
        let (files, rows) = name.strip_prefix('k')?.split_once("-rg")?;
        let row_group_rows = match rows.as_bytes().last()? {
            b'm' => rows[..rows.len() - 1].parse::<usize>().ok()? * 1_000_000,
            b'k' => rows[..rows.len() - 1].parse::<usize>().ok()? * 1_000,
            _ => rows.parse().ok()?,
        };
        Some(Layout {
            files: files.parse().ok()?,
            row_group_rows,
            s3,
        })
    }

    fn on_s3(self) -> Self {
        Layout { s3: true, ..self }
    }

    /// Where the layout's table is kept between runs of the bench.
    fn table_url(self, total_rows: usize) -> String {
        let name = format!("{}-{total_rows}", Layout { s3: false, ..self }.name());
        if self.s3 {
            format!("s3://{TABLE_BUCKET}/{name}")
        } else {
            common::bench_data("scale")
                .join(&name)
                .join("table")
                .display()
                .to_string()
        }
    }
}

/// The layout's table, written the first time (from the same seed locally and on S3, so both
/// hold the same rows); an object `complete` marks a table written whole.
async fn create_table(layout: Layout, total_rows: usize) -> SleeperTable {
    let stores = Stores::default();
    let url = layout.table_url(total_rows);
    let location = stores.resolve(&url).unwrap();
    let marker = location.child("complete");
    if location.store.head(&marker).await.is_ok() {
        return SleeperTable::open(&url, &stores).await.unwrap();
    }
    delete_all(&location).await;
    let schema = common::bench_schema();
    let tree = PartitionTree::from_split_points("scale", &schema, &[]).unwrap();
    let mut properties = TableProperties::new("scale", "scale", schema);
    properties.parquet.row_group_rows = layout.row_group_rows;
    properties.raw = properties.to_java();
    let mut writer = TableWriter::new(location.clone(), properties, tree, RowStyle::default(), 13);
    let rows_per_file = total_rows / layout.files;
    eprintln!(
        "writing {}: {} files × {rows_per_file} rows",
        layout.name(),
        layout.files
    );
    for _ in 0..layout.files {
        writer
            .write_random_file("root", rows_per_file, &["root"])
            .await
            .unwrap();
    }
    writer.finish().await.unwrap();
    location
        .store
        .put(&marker, PutPayload::new())
        .await
        .unwrap();
    SleeperTable::open(&url, &stores).await.unwrap()
}

async fn delete_all(location: &Location) {
    for object in location.list(&location.prefix).await.unwrap() {
        location.store.delete(&object.location).await.unwrap();
    }
}

fn ours(table: &SleeperTable, output: &Location, threads: usize) -> u64 {
    runtime(threads).block_on(async {
        let [query] = split_into_leaf_queries(table, "bench")
            .try_into()
            .expect("one leaf");
        run_leaf_query(table, &query, output, &ExportOptions::default())
            .await
            .unwrap()
            .rows_written
    })
}

/// The same bytes as an export moves, with plain requests: each input file whole in one GET
/// (16 at once), then one PUT of all of them. Returns the rows those files hold.
fn transfer(table: &SleeperTable, output: &Location, threads: usize) -> u64 {
    runtime(threads).block_on(async {
        let stores = Stores::default();
        let files: Vec<Location> = table
            .files
            .iter()
            .map(|file| stores.resolve(&file.filename).unwrap())
            .collect();
        let fetched: Vec<bytes::Bytes> = futures::stream::iter(&files)
            .map(|file| async move { file.store.get(&file.prefix).await?.bytes().await })
            .buffered(16)
            .try_collect()
            .await
            .unwrap();
        output
            .store
            .put(&output.child("transfer"), fetched.into_iter().collect())
            .await
            .unwrap();
        table.files.iter().map(|file| file.number_of_rows).sum()
    })
}

/// Runs one variant in this process, `runs` times.
fn run_variant(name: &str, total_rows: usize, runs: usize) {
    let mut parts = name.splitn(3, '-');
    let (engine, threads, layout) = (
        parts.next().unwrap(),
        parts.next().and_then(|t| t.parse().ok()).expect("threads"),
        parts.next().and_then(Layout::parse).expect("a layout"),
    );
    let table = runtime(2).block_on(create_table(layout, total_rows));
    for _ in 0..runs {
        let local_out = output_dir();
        let output_url = if layout.s3 {
            format!("s3://{OUTPUT_BUCKET}/{}", uuid::Uuid::new_v4())
        } else {
            local_out.path().display().to_string()
        };
        let output = Stores::default().resolve(&output_url).unwrap();
        peak_rss_reset();
        let started = Instant::now();
        let rows = match engine {
            "ours" => ours(&table, &output, threads),
            "datafusion" => common::datafusion_ordered_copy(
                &table,
                local_out.path(),
                threads,
                "",
                table.properties.parquet.row_group_rows,
            ),
            "transfer" => transfer(&table, &output, threads),
            other => panic!("unknown engine {other}"),
        };
        print_result(started.elapsed().as_secs_f64(), rows);
        if layout.s3 {
            runtime(1).block_on(delete_all(&output));
        }
    }
}

/// s3s-fs on a free port of 127.0.0.1, its buckets folders under the bench's data, logging each
/// request it serves; the variants' processes reach it through the AWS_* variables.
struct S3Server {
    process: Child,
    log: PathBuf,
    clock_ticks: f64,
}

/// What one or more variant runs cost the server.
#[derive(Default)]
struct ServerLoad {
    cpu: Duration,
    requests: BTreeMap<&'static str, usize>,
    get_bytes: u64,
    /// Answering CompleteMultipartUpload, which s3s-fs does by copying the parts into one file
    /// (and hashing them again) before it answers. S3 itself does not copy.
    completion: Duration,
}

/// `Duration`'s `Debug` form: `35.2ms`, `592.03µs`, `1.5s`.
fn parse_debug_duration(text: &str) -> Duration {
    let split = text.find(|c: char| c.is_alphabetic()).unwrap();
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().unwrap();
    let seconds = match unit {
        "s" => number,
        "ms" => number / 1e3,
        "µs" => number / 1e6,
        "ns" => number / 1e9,
        other => panic!("unknown duration unit {other:?}"),
    };
    Duration::from_secs_f64(seconds)
}

impl S3Server {
    /// The server, or None where s3s-fs is not installed.
    fn start() -> Option<Self> {
        let binary = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .chain(std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin")))
            .map(|dir| dir.join("s3s-fs"))
            .find(|binary| binary.is_file())?;
        let root = common::bench_data("scale").join("s3s-fs");
        for bucket in [TABLE_BUCKET, OUTPUT_BUCKET] {
            std::fs::create_dir_all(root.join(bucket)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = common::bench_data("scale").join("s3s-fs.log");
        let log_file = std::fs::File::create(&log).unwrap();
        // It logs to stdout.
        let process = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "bench", "--secret-key", "bench-secret"])
            .arg(&root)
            .env("RUST_LOG", "s3s::service=debug")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not start: see {log:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for (name, value) in [
            ("AWS_ENDPOINT_URL", format!("http://{address}")),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "bench".into()),
            ("AWS_SECRET_ACCESS_KEY", "bench-secret".into()),
            // As over HTTPS to S3, where the export leaves payloads out of the signature: the
            // bench's server stands in for S3 but speaks plain HTTP.
            ("AWS_UNSIGNED_PAYLOAD", "true".into()),
        ] {
            std::env::set_var(name, value);
        }
        let clock_ticks = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        Some(S3Server {
            process,
            log,
            clock_ticks,
        })
    }

    /// The server's CPU time so far (user and system) and the length of its log.
    fn mark(&self) -> (Duration, u64) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.id())).unwrap();
        // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        let log_length = std::fs::metadata(&self.log).unwrap().len();
        (
            Duration::from_secs_f64(ticks / self.clock_ticks),
            log_length,
        )
    }

    /// The server's CPU time and the requests it logged since `mark`.
    fn load_since(&self, (cpu_before, log_offset): (Duration, u64)) -> ServerLoad {
        let (cpu_now, _) = self.mark();
        let mut log = std::fs::File::open(&self.log).unwrap();
        log.seek(std::io::SeekFrom::Start(log_offset)).unwrap();
        let mut load = ServerLoad {
            cpu: cpu_now - cpu_before,
            ..ServerLoad::default()
        };
        // s3s logs a request's arrival and its answer's duration, each followed (a few lines
        // on) by its span's `start_time`, which pairs them up.
        let mut completions = Vec::new();
        let mut lines = std::io::BufReader::new(log).lines().map(Result::unwrap);
        while let Some(line) = lines.next() {
            let mut span_start = || {
                lines
                    .by_ref()
                    .find(|line| line.contains("with start_time: "))
                    .unwrap_or_default()
            };
            if let Some((_, answered)) = line.split_once("DEBUG s3s::service: duration: ") {
                let started = span_start();
                if completions.contains(&started) {
                    load.completion += parse_debug_duration(answered.split(',').next().unwrap());
                }
                continue;
            }
            let Some(request) = line.split_once("req: Request { method: ").map(|(_, r)| r) else {
                continue;
            };
            let (method, rest) = request.split_once(',').unwrap();
            let uri = rest
                .trim_start()
                .strip_prefix("uri: ")
                .and_then(|r| r.split_once(','))
                .map_or("", |(uri, _)| uri);
            let range = request
                .split_once("\"range\": \"bytes=")
                .and_then(|(_, r)| r.split_once('"'))
                .and_then(|(range, _)| range.split_once('-'))
                .and_then(|(first, last)| {
                    Some((first.parse::<u64>().ok()?, last.parse::<u64>().ok()?))
                });
            let tail = request.contains("\"range\": \"bytes=-");
            let kind = match (method, range) {
                ("GET", None) if tail => "GET tail",
                ("GET", Some((first, last))) => {
                    load.get_bytes += last + 1 - first;
                    "GET range"
                }
                ("GET", None) => "GET whole",
                ("HEAD", _) => "HEAD",
                ("PUT", _) if uri.contains("partNumber=") => "PUT part",
                ("PUT", _) => "PUT",
                ("POST", _) if uri.contains("uploadId=") => "complete upload",
                // The bench emptying the output bucket after the run.
                ("POST", _) if uri.contains("?delete") => "bulk delete",
                ("POST", _) => "start upload",
                ("DELETE", _) => "DELETE",
                _ => "other",
            };
            *load.requests.entry(kind).or_default() += 1;
            if kind == "complete upload" {
                completions.push(span_start());
            }
        }
        load
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn main() {
    common::allocator::limit_arenas();
    let args: Vec<String> = std::env::args().collect();
    let total_rows = env_number("SLEEPER_BENCH_TOTAL_ROWS", 10_000_000);
    let runs = env_number("SLEEPER_BENCH_RUNS", 3);
    if let Some(position) = args.iter().position(|a| a == "--variant") {
        let runs = args
            .get(position + 3)
            .and_then(|r| r.parse().ok())
            .unwrap_or(1);
        run_variant(&args[position + 1], total_rows, runs);
        return;
    }
    let layouts = [
        (8, 100_000),
        (8, 1_000_000),
        (32, 1_000_000),
        (128, 1_000_000),
    ]
    .map(|(files, row_group_rows)| Layout {
        files,
        row_group_rows,
        s3: false,
    });
    let s3_layouts = [layouts[1].on_s3(), layouts[3].on_s3()];
    let server = S3Server::start();
    if server.is_none() {
        println!(
            "s3s-fs not found, S3 variants left out (cargo install s3s-fs@0.14.1 --locked \
             --features binary)"
        );
    }
    let written = if server.is_some() {
        layouts.iter().chain(&s3_layouts).copied().collect()
    } else {
        layouts.to_vec()
    };
    // Tables are written once, here, so no variant's time or memory includes writing them.
    for &layout in &written {
        runtime(2).block_on(create_table(layout, total_rows));
    }
    let mut variants = Vec::new();
    for layout in layouts {
        variants.push(format!("ours-2-{}", layout.name()));
        variants.push(format!("ours-1-{}", layout.name()));
    }
    for layout in [layouts[1], layouts[3]] {
        variants.push(format!("datafusion-2-{}", layout.name()));
    }
    if server.is_some() {
        for layout in s3_layouts {
            variants.push(format!("ours-2-{}", layout.name()));
            variants.push(format!("transfer-2-{}", layout.name()));
        }
    }
    println!(
        "leaf export at scale: one leaf of {total_rows} rows, median of {runs} runs, each \
         variant in its own process"
    );
    let mut loads = BTreeMap::new();
    let mut measured = Vec::new();
    for variant in &variants {
        let mark = server.as_ref().map(S3Server::mark);
        measured.push((variant.clone(), measure(variant, runs)));
        if let (Some(server), Some(mark), true) = (&server, mark, variant.ends_with("-s3")) {
            loads.insert(variant.clone(), server.load_since(mark));
        }
    }
    for (variant, m) in &measured {
        assert_eq!(m.rows, total_rows as u64, "{variant} writes every row");
        println!(
            "  {variant:<26} {:>8.3} s  peak RSS {:>7.1} MiB",
            m.time.as_secs_f64(),
            m.peak_rss_mib
        );
        if let Some(load) = loads.get(variant) {
            let per_run = |n: usize| n as f64 / runs as f64;
            let requests: Vec<String> = load
                .requests
                .iter()
                .map(|(kind, n)| format!("{kind} {}", per_run(*n)))
                .collect();
            let ranged = load.requests.get("GET range").copied().unwrap_or(0);
            println!(
                "      a run: server CPU {:.2} s; requests: {}; mean ranged GET {:.0} KiB; \
                 completing the upload {:.2} s",
                load.cpu.as_secs_f64() / runs as f64,
                requests.join(", "),
                load.get_bytes as f64 / ranged.max(1) as f64 / 1024.0,
                load.completion.as_secs_f64() / runs as f64
            );
        }
    }
    let get = |name: &str| &measured.iter().find(|(v, _)| v == name).unwrap().1;
    let seconds = |name: &str| get(name).time.as_secs_f64();
    for threads in [1, 2] {
        println!(
            "  K=128 / K=8 per row, {threads} thread(s)  = {:.3} (target ≤ 1.3)",
            seconds(&format!("ours-{threads}-k128-rg1m"))
                / seconds(&format!("ours-{threads}-k8-rg1m"))
        );
    }
    println!(
        "  DataFusion / ours, K=8, 1 M row groups = {:.3}",
        seconds("datafusion-2-k8-rg1m") / seconds("ours-2-k8-rg1m")
    );
    if server.is_some() {
        for layout in s3_layouts {
            let name = layout.name();
            let local = seconds(&format!(
                "ours-2-{}",
                Layout {
                    s3: false,
                    ..layout
                }
                .name()
            ));
            let plain = seconds(&format!("transfer-2-{name}"));
            let ours = format!("ours-2-{name}");
            let completion = loads[&ours].completion.as_secs_f64() / runs as f64;
            println!(
                "  S3 / max(local, plain transfer), {name} = {:.3} (target ≤ 1.2); \
                 less the server's completion {:.3}",
                seconds(&ours) / local.max(plain),
                (seconds(&ours) - completion) / local.max(plain)
            );
        }
    }
    let peak = measured
        .iter()
        .filter(|(v, _)| v.starts_with("ours"))
        .map(|(_, m)| m.peak_rss_mib)
        .fold(0.0, f64::max);
    println!("  ours peak RSS, every layout         = {peak:.1} MiB (target ≤ 512)");
}
