//! A real HTTP webhook receiver for the subscription tests: it listens on a TCP port, records
//! every request that arrives, and answers as the test tells it to (a status, a delay). Taking
//! it down closes its port and every open connection, as a crashed endpoint would.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::task::JoinSet;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn event_number(&self) -> i64 {
        self.header("x-vitalbridge-event-number")
            .and_then(|v| v.parse().ok())
            .expect("event number header")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    pub status: u16,
    pub delay: Duration,
    /// Answers with `status` this many times more, then 200.
    pub failures_left: Option<u32>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            status: 200,
            delay: Duration::ZERO,
            failures_left: None,
        }
    }
}

#[derive(Default)]
struct State {
    /// Requests answered with a 2xx, in arrival order.
    accepted: Vec<Received>,
    /// Every request, whatever the answer.
    all: Vec<Received>,
    behaviour: Behaviour,
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: Option<JoinSet<()>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut r = Receiver {
            addr,
            state: Arc::default(),
            server: None,
        };
        r.serve(listener);
        r
    }

    /// The endpoint URL of path `path` (e.g. `/hook`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn behave(&self, b: Behaviour) {
        self.state.lock().expect("lock").behaviour = b;
    }

    /// Closes the port and every connection.
    pub fn down(&mut self) {
        self.server = None;
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind");
        self.serve(listener);
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let mut set = JoinSet::new();
        let state = self.state.clone();
        set.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(state, req).await) }
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        self.server = Some(set);
    }

    /// The accepted requests so far.
    pub fn accepted(&self) -> Vec<Received> {
        self.state.lock().expect("lock").accepted.clone()
    }

    /// Every request so far, failed ones too.
    pub fn all(&self) -> Vec<Received> {
        self.state.lock().expect("lock").all.clone()
    }

    /// Waits until at least `n` requests were accepted (panics after `within`).
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.accepted();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} notifications arrived within {within:?}: {:?}",
                got.len(),
                got.iter().map(|r| (&r.method, &r.path)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<String> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let received = Received {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body,
        at: Instant::now(),
    };
    let behaviour = {
        let mut s = state.lock().expect("lock");
        s.all.push(received.clone());
        let b = s.behaviour;
        if let Some(left) = s.behaviour.failures_left.as_mut() {
            if *left == 0 {
                s.behaviour = Behaviour::default();
            } else {
                *left -= 1;
            }
        }
        match b.failures_left {
            Some(0) => Behaviour::default(),
            _ => b,
        }
    };
    tokio::time::sleep(behaviour.delay).await;
    if (200..300).contains(&behaviour.status) {
        state.lock().expect("lock").accepted.push(received);
    }
    hyper::Response::builder()
        .status(behaviour.status)
        .body(String::new())
        .expect("response")
}
