//! The HTTP side: checking that the target is a loopback address, creating
//! the batches through `POST /add_batch`, and sending `POST /allocate`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{Client, Method, StatusCode, Url};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::stats::Outcome;
use crate::workload::{BatchSpec, Line};

/// The counter the message bus increments each time it runs a command
/// again after a version conflict at commit. With one instance the bus
/// queues commands on a product in turn, so conflicts come from other
/// instances (or other writers) of the same database.
pub const CONFLICT_RETRIES: &str = "allocation_version_conflict_retries_total";

/// A client for one or more instances of the service on one database:
/// keeps one connection per worker and instance alive.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    client: Client,
    bases: Vec<Url>,
    allocate: Vec<Url>,
    shape: Shape,
}

/// What one request of a phase is (`--shapes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// `POST /allocate` of one line: the book's route.
    Allocate,
    /// `POST /orders/<orderid>/allocate` of three lines, of three products.
    Order3,
    /// `POST /holds` of one line, then the order converting it: two
    /// requests, counted as one.
    HoldConvert,
    /// `GET /healthz`: no database, no command. What the HTTP hop and the
    /// service's middleware cost on their own, beside the shapes that
    /// also do work.
    Healthz,
}

impl Shape {
    /// Order lines a successful request allocates.
    pub fn lines(self) -> u64 {
        match self {
            Self::Allocate | Self::HoldConvert => 1,
            Self::Order3 => 3,
            Self::Healthz => 0,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Allocate => "allocate (1 line)",
            Self::Order3 => "order of 3 lines",
            Self::HoldConvert => "hold, then convert",
            Self::Healthz => "GET /healthz",
        }
    }
}

impl HttpTarget {
    /// `bases` (at least one) must already have passed [`ensure_loopback`].
    pub fn new(bases: Vec<Url>, concurrency: usize) -> anyhow::Result<Self> {
        if bases.is_empty() {
            bail!("no service instance to send requests to");
        }
        let client = Client::builder()
            // Never through a proxy from the environment: the target is local.
            .no_proxy()
            .pool_max_idle_per_host(concurrency.max(64))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the HTTP client")?;
        let allocate = bases
            .iter()
            .map(|base| base.join("allocate").context("bad service URL"))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            client,
            bases,
            allocate,
            shape: Shape::Allocate,
        })
    }

    /// The same instances and connections, sending requests of `shape`.
    pub fn with_shape(&self, shape: Shape) -> Self {
        Self {
            shape,
            ..self.clone()
        }
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Sends one request of this target's shape for `line`.
    pub async fn send(&self, line: &Line) -> Outcome {
        match self.shape {
            Shape::Allocate => self.allocate(line).await,
            Shape::Order3 => {
                let lines: Vec<Value> = std::iter::once(&line.sku)
                    .chain(&line.more_skus)
                    .map(|sku| json!({ "sku": sku, "qty": line.qty }))
                    .collect();
                self.order(line, json!({ "lines": lines })).await
            }
            Shape::HoldConvert => {
                let lines = json!([{ "sku": line.sku, "qty": line.qty }]);
                let held = self.post(line, "holds", &json!({ "lines": lines })).await;
                let hold_id = match held {
                    Ok(answer) => answer["hold_id"].as_str().map(str::to_owned),
                    Err(outcome) => return outcome,
                };
                let Some(hold_id) = hold_id else {
                    return Outcome::Failed("POST /holds answered no hold_id".into());
                };
                self.order(line, json!({ "lines": lines, "hold_id": hold_id }))
                    .await
            }
            Shape::Healthz => self.healthz(line).await,
        }
    }

    /// `GET /healthz` on the instance whose turn it is. A success counts as
    /// `Allocated`: it allocates nothing (the shape has no lines), but it
    /// did what was asked.
    async fn healthz(&self, line: &Line) -> Outcome {
        match self.exchange(line, Method::GET, "healthz", None).await {
            Ok(_) => Outcome::Allocated,
            Err(outcome) => outcome,
        }
    }

    /// `POST /orders/<orderid>/allocate`: allocated when it says where.
    async fn order(&self, line: &Line, body: Value) -> Outcome {
        let path = format!("orders/{}/allocate", line.orderid);
        match self.post(line, &path, &body).await {
            Ok(answer) if answer["lines"].as_array().is_some_and(|l| !l.is_empty()) => {
                Outcome::Allocated
            }
            Ok(_) => Outcome::NotAllocated,
            Err(outcome) => outcome,
        }
    }

    /// A `POST` of `body` to `path` on the instance whose turn it is: its
    /// JSON answer, or why there is none.
    async fn post(&self, line: &Line, path: &str, body: &Value) -> Result<Value, Outcome> {
        let bytes = self.exchange(line, Method::POST, path, Some(body)).await?;
        serde_json::from_slice(bytes.as_ref()).map_err(|error| {
            Outcome::Failed(format!("POST /{path} answered invalid JSON: {error}"))
        })
    }

    /// A request to `path` (with `body` as JSON, if any) on the instance
    /// whose turn it is: the body of a 2xx answer, or why there is none.
    async fn exchange(
        &self,
        line: &Line,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<impl AsRef<[u8]>, Outcome> {
        let base = &self.bases[instance_for(line.seq, self.bases.len())];
        let url = base
            .join(path)
            .map_err(|error| Outcome::Failed(format!("{path}: {error}")))?;
        let mut request = self.client.request(method.clone(), url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| Outcome::Failed(format!("{method} /{path}: {error}")))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| Outcome::Failed(format!("{method} /{path} body: {error}")))?;
        if !status.is_success() {
            return Err(Outcome::Status(status.as_u16()));
        }
        Ok(bytes)
    }

    /// The first instance's URL (the only one unless several were started).
    pub fn base(&self) -> &Url {
        &self.bases[0]
    }

    pub fn bases(&self) -> &[Url] {
        &self.bases
    }

    /// Sends one allocation to the instance whose turn it is, and
    /// classifies the answer.
    pub async fn allocate(&self, line: &Line) -> Outcome {
        let body = json!({ "orderid": line.orderid, "sku": line.sku, "qty": line.qty });
        let url = &self.allocate[instance_for(line.seq, self.allocate.len())];
        let response = match self.client.post(url.clone()).json(&body).send().await {
            Ok(response) => response,
            Err(error) => return Outcome::Failed(format!("POST /allocate: {error}")),
        };
        let status = response.status();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(error) => return Outcome::Failed(format!("POST /allocate body: {error}")),
        };
        if !status.is_success() {
            return Outcome::Status(status.as_u16());
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(answer) if answer.get("batchref").is_some_and(Value::is_string) => {
                Outcome::Allocated
            }
            Ok(_) => Outcome::NotAllocated,
            Err(error) => Outcome::Failed(format!("POST /allocate answered invalid JSON: {error}")),
        }
    }

    /// `GET /healthz` answers 200 on every instance.
    pub async fn is_alive(&self) -> bool {
        for base in &self.bases {
            let Ok(url) = base.join("healthz") else {
                return false;
            };
            if !matches!(self.client.get(url).send().await, Ok(r) if r.status().is_success()) {
                return false;
            }
        }
        true
    }

    /// The version conflicts retried so far, summed over the instances
    /// (`GET /metrics`); `None` when an instance does not answer with
    /// metrics (a service started elsewhere, without the endpoint).
    pub async fn conflict_retries(&self) -> Option<u64> {
        let mut total = 0;
        for base in &self.bases {
            let url = base.join("metrics").ok()?;
            let response = self.client.get(url).send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let text = response.text().await.ok()?;
            total += counter_total(&text, CONFLICT_RETRIES);
        }
        Some(total)
    }

    /// Creates the batches through the first instance's `POST /add_batch`, a few at a time but
    /// each product's in order (creation order breaks preference ties).
    pub async fn add_batches(&self, batches: Vec<BatchSpec>) -> anyhow::Result<()> {
        let url = self.base().join("add_batch").context("bad service URL")?;
        let mut per_sku: Vec<Vec<BatchSpec>> = Vec::new();
        for batch in batches {
            match per_sku.last_mut() {
                Some(group) if group[0].sku == batch.sku => group.push(batch),
                _ => per_sku.push(vec![batch]),
            }
        }
        let queue = Arc::new(tokio::sync::Mutex::new(per_sku));
        let mut workers = JoinSet::new();
        for _ in 0..8 {
            let (client, url, queue) = (self.client.clone(), url.clone(), queue.clone());
            workers.spawn(async move {
                loop {
                    let Some(group) = queue.lock().await.pop() else {
                        return Ok::<(), anyhow::Error>(());
                    };
                    for batch in group {
                        let body = json!({
                            "ref": batch.reference, "sku": batch.sku,
                            "qty": batch.qty, "eta": batch.eta,
                        });
                        let response = client
                            .post(url.clone())
                            .json(&body)
                            .send()
                            .await
                            .with_context(|| format!("POST {url}"))?;
                        let status = response.status();
                        if status != StatusCode::CREATED {
                            let text = response.text().await.unwrap_or_default();
                            bail!("POST {url} for batch {}: {status} {text}", batch.reference);
                        }
                    }
                }
            });
        }
        while let Some(worker) = workers.join_next().await {
            worker.context("a set-up worker failed")??;
        }
        Ok(())
    }
}

/// Which of `instances` gets order line number `seq`: round-robin per
/// request rather than a client sticking to one instance, so that every
/// instance gets the same share whatever the concurrency (8 sticky clients
/// over 3 instances would load them 3, 3 and 2), as a round-robin load
/// balancer in front of them would.
pub fn instance_for(seq: u64, instances: usize) -> usize {
    let instances = u64::try_from(instances.max(1)).unwrap_or(1);
    usize::try_from(seq % instances).unwrap_or(0)
}

/// The sum of a counter's samples, all label sets together, in the
/// Prometheus text format: `name{labels} value [timestamp]` lines, with
/// `#` comments. A counter that was never incremented has no sample: 0.
pub fn counter_total(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            // Not a longer name that starts with this one.
            let value = if let Some(labelled) = rest.strip_prefix('{') {
                // Label values may hold `}` in quotes; the value follows
                // the last one.
                &labelled[labelled.rfind('}')? + 1..]
            } else if rest.starts_with([' ', '\t']) {
                rest
            } else {
                return None;
            };
            let value: f64 = value.split_whitespace().next()?.parse().ok()?;
            // Counters are whole numbers here; a float keeps the format's syntax.
            (value.is_finite() && value >= 0.0).then_some(value as u64)
        })
        .sum()
}

/// Parses `--url` and refuses anything but plain HTTP to a loopback
/// address: the harness sends tens of thousands of writes, and must never
/// be pointed at a shared or production service by mistake. A host name
/// must resolve to loopback addresses only.
pub async fn ensure_loopback(url: &str) -> anyhow::Result<Url> {
    let mut parsed = Url::parse(url).with_context(|| format!("invalid --url {url:?}"))?;
    if parsed.scheme() != "http" {
        bail!("--url must be http://HOST:PORT on this machine, got {url:?}");
    }
    let host = parsed
        .host_str()
        .with_context(|| format!("--url {url:?} has no host"))?
        .to_owned();
    let port = parsed
        .port_or_known_default()
        .with_context(|| format!("--url {url:?} has no port"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<IpAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .with_context(|| format!("cannot resolve the host of --url {url:?}"))?
            .map(|address| address.ip())
            .collect(),
    };
    if addresses.is_empty() || !addresses.iter().all(IpAddr::is_loopback) {
        bail!(
            "refusing to load {url:?}: the harness only sends requests to loopback addresses \
             (127.0.0.0/8, ::1, localhost)"
        );
    }
    if !parsed.path().ends_with('/') {
        let path = format!("{}/", parsed.path());
        parsed.set_path(&path);
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_loopback_http_is_accepted() {
        for ok in [
            "http://127.0.0.1:5005",
            "http://127.1.2.3:80/",
            "http://[::1]:5005",
            "http://localhost:5005",
        ] {
            assert!(ensure_loopback(ok).await.is_ok(), "{ok}");
        }
        for refused in [
            "http://10.0.0.1:5005",
            "http://192.168.1.1",
            "https://127.0.0.1:5005",
            "http://[2001:db8::1]:80",
            "not a url",
        ] {
            assert!(ensure_loopback(refused).await.is_err(), "{refused}");
        }
    }

    #[test]
    fn requests_go_round_robin_over_the_instances() {
        let shares = |instances: usize| {
            let mut counts = vec![0; instances];
            for seq in 0..300 {
                counts[instance_for(seq, instances)] += 1;
            }
            counts
        };
        assert_eq!(shares(1), vec![300]);
        assert_eq!(shares(3), vec![100, 100, 100]);
        // Consecutive lines (sent by different clients) go to different instances.
        assert_eq!(
            (0..4).map(|seq| instance_for(seq, 2)).collect::<Vec<_>>(),
            vec![0, 1, 0, 1]
        );
        assert_eq!(instance_for(5, 0), 0);
    }

    #[test]
    fn a_counter_is_summed_over_its_label_sets() {
        let text = "\
# HELP allocation_version_conflict_retries_total Commands run again
# TYPE allocation_version_conflict_retries_total counter
allocation_version_conflict_retries_total{command=\"allocate\"} 12
allocation_version_conflict_retries_total{command=\"odd}name\"} 3 1700000000000
allocation_version_conflict_retries_total_extra 100
allocation_version_conflict_retries 100
allocation_version_conflict_retries_total 5
http_requests_total{route=\"/allocate\"} 9000
";
        assert_eq!(counter_total(text, CONFLICT_RETRIES), 20);
        assert_eq!(counter_total("# only comments\n", CONFLICT_RETRIES), 0);
        assert_eq!(
            counter_total(
                &format!("{CONFLICT_RETRIES} not-a-number\n"),
                CONFLICT_RETRIES
            ),
            0
        );
    }

    /// A server that answers each connection's first request with
    /// `status`, after recording its request line.
    async fn answering(status: &'static str) -> (Url, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url =
            Url::parse(&format!("http://{}/", listener.local_addr().expect("addr"))).expect("url");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = vec![0; 4096];
            let read = socket.read(&mut request).await.expect("read");
            let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
            socket.write_all(answer.as_bytes()).await.expect("write");
            let request = String::from_utf8_lossy(&request[..read]).into_owned();
            request.lines().next().unwrap_or_default().to_owned()
        });
        (url, server)
    }

    #[tokio::test]
    async fn the_probe_shape_gets_healthz_and_counts_only_a_success() {
        let workload = crate::workload::Workload::new("t".into(), 10);
        for (status, expected) in [
            ("200 OK", Outcome::Allocated),
            ("503 Service Unavailable", Outcome::Status(503)),
        ] {
            let (url, server) = answering(status).await;
            let target = HttpTarget::new(vec![url], 1)
                .expect("target")
                .with_shape(Shape::Healthz);
            assert_eq!(target.send(&workload.line(0)).await, expected);
            assert_eq!(server.await.expect("served"), "GET /healthz HTTP/1.1");
        }
        assert_eq!(Shape::Healthz.lines(), 0, "it allocates nothing");
    }

    #[tokio::test]
    async fn the_base_url_keeps_its_path_for_joins() {
        let base = ensure_loopback("http://127.0.0.1:5005/prefix")
            .await
            .expect("loopback");
        assert_eq!(
            base.join("allocate").expect("joins").as_str(),
            "http://127.0.0.1:5005/prefix/allocate"
        );
    }
}
