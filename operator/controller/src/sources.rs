//! Which metric source a pipeline's analysis reads, built from its spec:
//! Prometheus at `spec.rollout.analysis.prometheusUrl`, or a direct scrape
//! of the pipeline's gateway pods, found through their EndpointSlices.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use reco_api::{MetricSourceKind, RecommenderPipeline};
use reco_metric_source::{MetricSource, PrometheusSource, ScrapeSource, Url};

use crate::resources::{HTTP_PORT, gateway_service_name};

/// Gives each pipeline the source its spec asks for.
pub trait MetricSources: Send + Sync {
    /// The source to read, or why there is none (the look is then Inconclusive).
    fn for_pipeline<'a>(&'a self, p: &'a RecommenderPipeline) -> BoxFuture<'a, Result<Arc<dyn MetricSource>, String>>;

    /// Called when the pipeline has no rollout in flight: state kept for its
    /// looks (scrape history, background scraping) can go.
    fn release(&self, _p: &RecommenderPipeline) {}
}

/// Sources for pipelines running in the cluster. Scrape sources are kept
/// per pipeline because they remember earlier scrapes (counter resets).
pub struct ClusterMetricSources {
    client: Client,
    scrapers: Mutex<HashMap<(String, String), Arc<ScrapeSource>>>,
}

impl ClusterMetricSources {
    pub fn new(client: Client) -> Self {
        Self { client, scrapers: Mutex::default() }
    }

    async fn gateway_targets(&self, p: &RecommenderPipeline) -> Result<Vec<Url>, String> {
        let namespace = p.namespace().unwrap_or_default();
        let service = gateway_service_name(p);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &namespace);
        let list = slices
            .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
            .await
            .map_err(|e| format!("listing EndpointSlices of Service {namespace}/{service}: {e}"))?;
        let targets: Vec<Url> = list
            .items
            .iter()
            .flat_map(|slice| slice.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .flat_map(|e| e.addresses.iter())
            .filter_map(|ip| {
                let host = if ip.contains(':') { format!("[{ip}]") } else { ip.clone() };
                Url::parse(&format!("http://{host}:{HTTP_PORT}/metrics")).ok()
            })
            .collect();
        if targets.is_empty() {
            return Err(format!("no ready gateway pods behind Service {namespace}/{service}"));
        }
        Ok(targets)
    }
}

impl MetricSources for ClusterMetricSources {
    fn for_pipeline<'a>(&'a self, p: &'a RecommenderPipeline) -> BoxFuture<'a, Result<Arc<dyn MetricSource>, String>> {
        Box::pin(async move {
            let analysis = &p.spec.rollout.analysis;
            match analysis.source {
                MetricSourceKind::Prometheus => {
                    let url = analysis.prometheus_url.as_deref().unwrap_or_default();
                    let url = Url::parse(url).map_err(|e| format!("prometheusUrl {url:?}: {e}"))?;
                    // The job of a ServiceMonitor selecting the gateway Service is the Service's name.
                    let job = analysis.prometheus_job.clone().unwrap_or_else(|| gateway_service_name(p));
                    let source = PrometheusSource::new(url).map_err(|e| e.to_string())?.with_job(job);
                    Ok(Arc::new(source) as Arc<dyn MetricSource>)
                }
                MetricSourceKind::Scrape => {
                    let targets = self.gateway_targets(p).await?;
                    let key = (p.namespace().unwrap_or_default(), p.name_any());
                    let existing = self.scrapers.lock().expect("scrapers lock").get(&key).cloned();
                    let scraper = match existing {
                        Some(scraper) => scraper,
                        None => {
                            let scraper = Arc::new(ScrapeSource::new(targets.clone()).map_err(|e| e.to_string())?);
                            self.scrapers.lock().expect("scrapers lock").insert(key, scraper.clone());
                            tokio::spawn(scrape_periodically(Arc::downgrade(&scraper)));
                            scraper
                        }
                    };
                    scraper.set_targets(targets);
                    Ok(scraper as Arc<dyn MetricSource>)
                }
            }
        })
    }

    fn release(&self, p: &RecommenderPipeline) {
        let key = (p.namespace().unwrap_or_default(), p.name_any());
        self.scrapers.lock().expect("scrapers lock").remove(&key);
    }
}

/// How often gateways are scraped between looks, so that a step's window
/// starts near its start and counter resets are seen.
const SCRAPE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Scrapes until the source is released. Failures are left to the next look,
/// which scrapes again and reports them as Inconclusive.
async fn scrape_periodically(scraper: std::sync::Weak<ScrapeSource>) {
    let mut ticks = tokio::time::interval(SCRAPE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(scraper) = scraper.upgrade() else { return };
        if let Err(error) = scraper.scrape().await {
            tracing::debug!(%error, "background scrape failed");
        }
    }
}
