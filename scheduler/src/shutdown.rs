//! One stop signal for every task of a process: SIGTERM or Ctrl-C, waited on by as many tasks
//! as need it (scheduler loop, API, workers).

use std::future::Future;

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    stopped: watch::Receiver<bool>,
}

impl Shutdown {
    /// Starts listening for SIGTERM and Ctrl-C. Needs a tokio runtime.
    pub fn on_signals() -> Self {
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            signal().await;
            let _ = stop.send(true);
        });
        Self { stopped }
    }

    /// Resolves once the process is asked to stop.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    }
}

async fn signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "SIGTERM handler not installed; only Ctrl-C stops");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
