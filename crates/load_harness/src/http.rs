//! The HTTP side: checking that the target is a loopback address, creating
//! the batches through `POST /add_batch`, and sending `POST /allocate`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{Client, StatusCode, Url};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::stats::Outcome;
use crate::workload::{BatchSpec, Line};

/// A client for one service: keeps one connection per worker alive.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    client: Client,
    base: Url,
    allocate: Url,
}

impl HttpTarget {
    /// `base` must already have passed [`ensure_loopback`].
    pub fn new(base: Url, concurrency: usize) -> anyhow::Result<Self> {
        let client = Client::builder()
            // Never through a proxy from the environment: the target is local.
            .no_proxy()
            .pool_max_idle_per_host(concurrency.max(64))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the HTTP client")?;
        let allocate = base.join("allocate").context("bad service URL")?;
        Ok(Self {
            client,
            base,
            allocate,
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Sends one allocation and classifies the answer.
    pub async fn allocate(&self, line: &Line) -> Outcome {
        let body = json!({ "orderid": line.orderid, "sku": line.sku, "qty": line.qty });
        let response = match self
            .client
            .post(self.allocate.clone())
            .json(&body)
            .send()
            .await
        {
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

    /// `GET /healthz` answers 200.
    pub async fn is_alive(&self) -> bool {
        let Ok(url) = self.base.join("healthz") else {
            return false;
        };
        matches!(self.client.get(url).send().await, Ok(r) if r.status().is_success())
    }

    /// Creates the batches through `POST /add_batch`, a few at a time but
    /// each product's in order (creation order breaks preference ties).
    pub async fn add_batches(&self, batches: Vec<BatchSpec>) -> anyhow::Result<()> {
        let url = self.base.join("add_batch").context("bad service URL")?;
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
