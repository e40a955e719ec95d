//! An HTTP proxy on loopback in front of the local S3 server that fails some requests the ways S3
//! does (503 SlowDown, 500 InternalError, a connection closed before any response), or holds
//! back multipart-upload parts, so that a test can catch an upload in progress.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub struct FaultProxy {
    pub url: String,
    requests: Arc<AtomicUsize>,
    faults: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy)]
struct Behaviour {
    fail_every: Option<usize>,
    part_delay: Duration,
}

impl FaultProxy {
    /// Forwards to `upstream` (`host:port`), failing every `every`-th request (1: all), cycling
    /// through the three faults.
    pub async fn start(upstream: &str, every: usize) -> FaultProxy {
        Self::with(
            upstream,
            Behaviour {
                fail_every: Some(every.max(1)),
                part_delay: Duration::ZERO,
            },
        )
        .await
    }

    /// Forwards every request, each multipart-upload part after `delay`.
    pub async fn slow_parts(upstream: &str, delay: Duration) -> FaultProxy {
        Self::with(
            upstream,
            Behaviour {
                fail_every: None,
                part_delay: delay,
            },
        )
        .await
    }

    async fn with(upstream: &str, behaviour: Behaviour) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let (requests, faults) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counters = (Arc::clone(&requests), Arc::clone(&faults));
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (upstream, requests, faults) = (
                    upstream.clone(),
                    Arc::clone(&counters.0),
                    Arc::clone(&counters.1),
                );
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, behaviour, &requests, &faults).await;
                });
            }
        });
        FaultProxy {
            url,
            requests,
            faults,
            task,
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn faults(&self) -> usize {
        self.faults.load(Ordering::SeqCst)
    }
}

/// One HTTP/1.1 message: its head (start line and headers, as sent) and its body.
struct Message {
    head: String,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn start_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// The head with `Connection: close` instead of whatever it had.
    fn closing_head(&self) -> String {
        let mut lines: Vec<&str> = self
            .head
            .lines()
            .filter(|line| {
                !line.is_empty()
                    && !line
                        .split_once(':')
                        .is_some_and(|(key, _)| key.trim().eq_ignore_ascii_case("connection"))
            })
            .collect();
        lines.push("Connection: close");
        format!("{}\r\n\r\n", lines.join("\r\n"))
    }
}

async fn read_message(
    reader_lines: &mut BufReader<impl AsyncRead + Unpin>,
    has_body: bool,
) -> std::io::Result<Option<Message>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader_lines.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let mut message = Message {
        head,
        body: Vec::new(),
    };
    if !has_body {
        return Ok(Some(message));
    }
    if let Some(length) = message.header("content-length") {
        let length: usize = length.parse().unwrap_or(0);
        message.body.resize(length, 0);
        reader_lines.read_exact(&mut message.body).await?;
    } else if message
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        // Kept chunked, as sent.
        loop {
            let mut size_line = String::new();
            reader_lines.read_line(&mut size_line).await?;
            message.body.extend_from_slice(size_line.as_bytes());
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader_lines.read_exact(&mut chunk).await?;
            message.body.extend_from_slice(&chunk);
            if size == 0 {
                break;
            }
        }
    }
    Ok(Some(message))
}

async fn serve(
    client: TcpStream,
    upstream: &str,
    behaviour: Behaviour,
    requests: &AtomicUsize,
    faults: &AtomicUsize,
) -> std::io::Result<()> {
    let (read_half, mut client_writer) = client.into_split();
    let mut client_reader = BufReader::new(read_half);
    loop {
        let Some(request) = read_message(&mut client_reader, true).await? else {
            return Ok(());
        };
        let number = requests.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(every) = behaviour
            .fail_every
            .filter(|every| number.is_multiple_of(*every))
        {
            faults.fetch_add(1, Ordering::SeqCst);
            let (status, code) = match (number / every) % 3 {
                0 => ("503 Slow Down", "SlowDown"),
                1 => ("500 Internal Server Error", "InternalError"),
                _ => return Ok(()), // dropped: closed with no response
            };
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
                 <Message>injected by the test's fault proxy</Message></Error>"
            );
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            client_writer.write_all(response.as_bytes()).await?;
            continue;
        }
        if request.start_line().contains("partNumber=") {
            tokio::time::sleep(behaviour.part_delay).await;
        }
        let upstream_stream = TcpStream::connect(upstream).await?;
        let (upstream_read, mut upstream_writer) = upstream_stream.into_split();
        upstream_writer
            .write_all(request.closing_head().as_bytes())
            .await?;
        upstream_writer.write_all(&request.body).await?;
        let mut upstream_reader = BufReader::new(upstream_read);
        let head_only = request.start_line().starts_with("HEAD ");
        let Some(mut response) = read_message(&mut upstream_reader, !head_only).await? else {
            return Ok(());
        };
        let status_has_no_body = ["204", "304"]
            .iter()
            .any(|code| response.start_line().split(' ').nth(1) == Some(code));
        let delimited = response.header("content-length").is_some()
            || response.header("transfer-encoding").is_some();
        if !head_only && !status_has_no_body && !delimited {
            upstream_reader.read_to_end(&mut response.body).await?;
        }
        client_writer.write_all(response.head.as_bytes()).await?;
        client_writer.write_all(&response.body).await?;
        if !head_only && !status_has_no_body && !delimited {
            return Ok(());
        }
    }
}
