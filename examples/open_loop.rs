//! Open-loop load for `bench/run.sh`: requests leave on a schedule of random (Poisson)
//! arrivals at a fixed rate, whatever the answers do, and every latency is measured from the
//! request's scheduled time. A stall therefore counts against every request it holds up,
//! which a closed loop (each connection waiting for its answer) hides: coordinated omission.
//! wrk's pacing is such a closed loop, and it releases requests on millisecond ticks, in
//! bursts, where many independent clients send at random instants.
//!
//!   cargo run --release --example open_loop -- --addr 127.0.0.1:8080 --rate 18000 \
//!     --seconds 10 --mode consume --customers 10000 --key KEY
//!
//! Requests go round-robin over `--connections` keep-alive HTTP/1.1 connections and are
//! pipelined when a connection still has an answer due. It prints one line in the format of
//! `bench/quotagate.lua`'s, which `bench/helper.py` reads:
//!   BENCH_RESULT requests=.. duration_us=.. p50_us=.. ... errors_status=.. send_lag_p99_us=..
//! `send_lag_p99_us` is how late the generator itself sent (the 99th percentile): latencies
//! include it, so a large value means the generator, not the gateway, was short of CPU.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rand::Rng;

#[derive(Parser)]
struct Args {
    /// The gateway's address.
    #[arg(long)]
    addr: SocketAddr,
    /// Requests per second, on average.
    #[arg(long)]
    rate: f64,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Requests pick customers c0..c<customers-1> at random.
    #[arg(long, default_value_t = 10_000)]
    customers: usize,
    /// API key (sent as a bearer token).
    #[arg(long, default_value = "")]
    key: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Record,
    Consume,
    Check,
    Health,
}

/// How long readers wait for answers after the last request was sent.
const DRAIN: Duration = Duration::from_secs(5);

/// Scheduled send times of one connection's requests whose answers are still due, in order.
type Due = Arc<Mutex<VecDeque<Instant>>>;

/// What one connection's reader saw.
#[derive(Default)]
struct Observed {
    latencies_us: Vec<u64>,
    errors_status: u64,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    if !(args.rate > 0.0 && args.seconds > 0.0 && args.connections > 0 && args.customers > 0) {
        eprintln!("--rate, --seconds, --connections and --customers must be positive");
        std::process::exit(2);
    }
    let requests = build_requests(&args);
    let sending = Arc::new(AtomicBool::new(true));

    let mut writers = Vec::with_capacity(args.connections);
    let mut readers = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let stream = TcpStream::connect(args.addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        let due: Due = Arc::default();
        let reading = stream.try_clone()?;
        let (reader_due, reader_sending) = (due.clone(), sending.clone());
        readers.push(thread::spawn(move || {
            read_answers(reading, reader_due, reader_sending)
        }));
        writers.push((stream, due));
    }

    let mut rng = rand::rng();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let mut send_lags_us = Vec::new();
    let mut next = start;
    let mut sent = 0usize;
    while next < end {
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
            continue;
        }
        let (stream, due) = &mut writers[sent % args.connections];
        // Queued before the write: the answer cannot arrive before the request leaves.
        due.lock().expect("due lock").push_back(next);
        stream.write_all(&requests[rng.random_range(0..requests.len())])?;
        send_lags_us.push(micros(Instant::now() - next));
        sent += 1;
        // Exponential gaps: the arrivals of many independent clients.
        let gap = -(1.0 - rng.random::<f64>()).ln() / args.rate;
        next += Duration::from_secs_f64(gap);
    }
    let duration = start.elapsed();
    sending.store(false, Ordering::Relaxed);

    let mut observed = Observed::default();
    for reader in readers {
        let part = reader.join().expect("reader thread")?;
        observed.latencies_us.extend(part.latencies_us);
        observed.errors_status += part.errors_status;
    }
    let timeouts = sent - observed.latencies_us.len();
    let mut latencies = observed.latencies_us;
    latencies.sort_unstable();
    send_lags_us.sort_unstable();
    let mean = latencies.iter().sum::<u64>() as f64 / latencies.len().max(1) as f64;
    println!(
        "BENCH_RESULT requests={} duration_us={} p50_us={} p90_us={} p99_us={} p999_us={} \
         mean_us={:.0} max_us={} errors_connect=0 errors_read=0 errors_write=0 \
         errors_status={} errors_timeout={} send_lag_p99_us={}",
        latencies.len(),
        micros(duration),
        percentile(&latencies, 500),
        percentile(&latencies, 900),
        percentile(&latencies, 990),
        percentile(&latencies, 999),
        mean,
        latencies.last().copied().unwrap_or(0),
        observed.errors_status,
        timeouts,
        percentile(&send_lags_us, 990),
    );
    Ok(())
}

/// Every request this run can send, built once, as `bench/quotagate.lua` does.
fn build_requests(args: &Args) -> Vec<Vec<u8>> {
    let post = |path: &str, body: String| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            args.addr,
            args.key,
            body.len()
        )
        .into_bytes()
    };
    let event =
        |c: usize| format!(r#"{{"customerId":"c{c}","eventType":"llm","values":{{"tokens":1}}}}"#);
    let customers = 0..args.customers;
    match args.mode {
        Mode::Record => customers
            .map(|c| post("/v1/events/record", event(c)))
            .collect(),
        Mode::Consume => customers
            .map(|c| post("/v1/limits/consume", event(c)))
            .collect(),
        Mode::Check => customers
            .map(|c| post("/v1/limits/check", format!(r#"{{"customerId":"c{c}"}}"#)))
            .collect(),
        Mode::Health => {
            vec![format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", args.addr).into_bytes()]
        }
    }
}

/// Reads one connection's answers in order until sending has stopped and none is due, or
/// until `DRAIN` after that.
fn read_answers(mut stream: TcpStream, due: Due, sending: Arc<AtomicBool>) -> io::Result<Observed> {
    let mut observed = Observed::default();
    // Unparsed bytes are buffer[start..end].
    let mut buffer = vec![0u8; 256 * 1024];
    let (mut start, mut end) = (0, 0);
    let mut drain_until = None;
    loop {
        while let Some((length, status)) = answer_in(&buffer[start..end])? {
            start += length;
            let scheduled = due.lock().expect("due lock").pop_front();
            let scheduled =
                scheduled.ok_or_else(|| io::Error::other("an answer nobody asked for"))?;
            observed.latencies_us.push(micros(scheduled.elapsed()));
            if status >= 400 {
                observed.errors_status += 1;
            }
        }
        if !sending.load(Ordering::Relaxed) {
            let until = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN);
            if due.lock().expect("due lock").is_empty() || Instant::now() > until {
                return Ok(observed);
            }
        }
        buffer.copy_within(start..end, 0);
        (start, end) = (0, end - start);
        if end == buffer.len() {
            return Err(io::Error::other("an answer larger than the read buffer"));
        }
        match stream.read(&mut buffer[end..]) {
            Ok(0) => return Ok(observed),
            Ok(read) => end += read,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The length and status of the complete answer at the start of `buffer`, if it holds one.
fn answer_in(buffer: &[u8]) -> io::Result<Option<(usize, u16)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buffer).map_err(io::Error::other)? {
        httparse::Status::Complete(head) => head,
        httparse::Status::Partial => return Ok(None),
    };
    let body = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .ok_or_else(|| io::Error::other("an answer without content-length"))?;
    let status = response.code.unwrap_or(0);
    Ok((buffer.len() >= head + body).then_some((head + body, status)))
}

/// The nearest-rank percentile, given in thousandths (990 for p99) so the rank is exact.
fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    let rank = (per_mille * sorted.len()).div_ceil(1000);
    sorted.get(rank.max(1) - 1).copied().unwrap_or(0)
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";

    #[test]
    fn pipelined_answers_are_read_one_at_a_time() {
        let refused = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 3\r\n\r\n{ }";
        let both = [OK, refused.as_slice()].concat();
        assert_eq!(answer_in(&both).unwrap(), Some((OK.len(), 200)));
        assert_eq!(
            answer_in(&both[OK.len()..]).unwrap(),
            Some((refused.len(), 429))
        );
    }

    #[test]
    fn a_partial_answer_waits_for_more_bytes() {
        assert_eq!(answer_in(&OK[..OK.len() - 1]).unwrap(), None);
        assert_eq!(answer_in(&OK[..10]).unwrap(), None);
        assert_eq!(answer_in(b"").unwrap(), None);
    }

    #[test]
    fn an_answer_without_content_length_is_an_error() {
        assert!(answer_in(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&sorted, 500), 500);
        assert_eq!(percentile(&sorted, 999), 999);
        assert_eq!(percentile(&sorted, 1000), 1000);
        assert_eq!(percentile(&[], 990), 0);
    }
}
