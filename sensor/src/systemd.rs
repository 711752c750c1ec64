//! systemd integration: READY once the hooks are attached, WATCHDOG pings while every
//! stage beats its heartbeat, RELOADING/STOPPING around SIGHUP and shutdown. Outside
//! systemd (no `NOTIFY_SOCKET`) every call is a no-op.
use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// The hooks are attached and flows are being recorded.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Whether systemd asks for the watchdog to be fed (`WatchdogSec`).
pub fn watchdog_enabled() -> bool {
    sd_notify::watchdog_enabled().is_some()
}

/// Feeds the watchdog: only called while every stage is healthy, so a stuck stage gets
/// the service restarted.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}
