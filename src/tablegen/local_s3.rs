//! The local S3 server the tests and benchmarks run against (moto, which `scripts/test.sh`
//! starts): what object_store cannot do there, creating buckets and listing uploads in progress,
//! as plain unsigned HTTP requests (the server accepts them).

/// A new bucket named `<prefix>-<random>`.
pub fn create_bucket(prefix: &str) -> String {
    let bucket = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    create_named_bucket(&bucket);
    bucket
}

pub fn create_named_bucket(bucket: &str) {
    let response = local_s3_request("PUT", &format!("/{bucket}"));
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "creating bucket {bucket}: {response}"
    );
}

/// The local S3 server's address, `host:port`.
pub fn local_s3_address() -> String {
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .expect("AWS_ENDPOINT_URL is not set: run the tests with scripts/test.sh, which starts the local S3 server");
    endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// A bodiless request to the local S3 server, unsigned (it accepts those), and its response.
fn local_s3_request(method: &str, path_and_query: &str) -> String {
    use std::io::{Read, Write};
    let address = local_s3_address();
    let mut stream = std::net::TcpStream::connect(&address)
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    write!(
        stream,
        "{method} {path_and_query} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The keys of the multipart uploads in progress in `bucket`, asked of the server directly.
pub fn multipart_uploads_in_progress(bucket: &str) -> Vec<String> {
    let response = local_s3_request("GET", &format!("/{bucket}?uploads"));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split("<Key>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_owned()))
        .collect()
}
