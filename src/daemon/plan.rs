//! The supervisor's decisions as a pure function: from what should run (the formation of the
//! current release), what is recorded as running (dyno rows) and the clock, to the actions
//! that bring the two together. Nothing here spawns, signals or reads the disk, so every rule
//! is unit-tested without processes; `supervisor` only carries the actions out.

use std::collections::HashMap;
use std::time::Duration;

use time::OffsetDateTime;

use crate::store::dynos::{DynoRow, DynoState};
use crate::timefmt;

/// Backoff after repeated crashes: at once, then 1 s, 2 s, 4 s … capped here.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A dyno that stayed up this long before crashing starts its backoff from the beginning.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// What should run for one app.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// The current release; None before the first deploy (nothing should run).
    pub release: Option<i64>,
    pub processes: Vec<ProcessSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub process_type: String,
    pub command: String,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new dyno `type.num` of the current release.
    Start { process_type: String, num: i64, command: String },
    /// SIGTERM, SIGKILL after the grace period; the row goes when the process has exited.
    Stop { dyno: i64 },
    /// A row with no process behind it that is no longer wanted.
    Forget { dyno: i64 },
    /// A crashed dyno whose backoff has elapsed: start it again, same name and port.
    Restart { dyno: i64 },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// When to look again (the earliest pending crash restart), if ever.
    pub wake_in: Option<Duration>,
}

/// How long a dyno that has crashed `restarts` times in a row waits before starting again.
pub fn restart_delay(restarts: i64) -> Duration {
    if restarts <= 0 {
        return Duration::ZERO;
    }
    let exp = (restarts - 1).min(16) as u32;
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

/// True when a dyno that started at `started_at` and exits `now` had been healthy long enough
/// for its crash count to start over.
pub fn was_healthy(started_at: Option<&str>, now: OffsetDateTime) -> bool {
    started_at.and_then(timefmt::parse).is_some_and(|t| now - t >= HEALTHY_AFTER)
}

pub fn plan(desired: &Desired, dynos: &[DynoRow], now: OffsetDateTime) -> Plan {
    let mut out = Plan::default();
    let spec = |t: &str| desired.processes.iter().find(|p| p.process_type == t);
    let wanted = |d: &DynoRow| {
        Some(d.release) == desired.release
            && spec(&d.process_type).is_some_and(|s| d.num <= i64::from(s.count))
    };

    // Of several live rows for one name (a replacement raced a restart of the daemon), the
    // newest wins.
    let mut newest: HashMap<(&str, i64, i64), i64> = HashMap::new();
    for d in dynos.iter().filter(|d| d.state != DynoState::Stopping) {
        let key = (d.process_type.as_str(), d.num, d.release);
        let id = newest.entry(key).or_insert(d.id);
        *id = (*id).max(d.id);
    }
    let superseded = |d: &DynoRow| newest.get(&(d.process_type.as_str(), d.num, d.release)) != Some(&d.id);

    for d in dynos {
        let keep = wanted(d) && !superseded(d);
        match d.state {
            DynoState::Stopping => {}
            DynoState::Starting | DynoState::Up if !keep => out.actions.push(Action::Stop { dyno: d.id }),
            DynoState::Starting | DynoState::Up => {}
            DynoState::Down | DynoState::Crashed if !keep => out.actions.push(Action::Forget { dyno: d.id }),
            DynoState::Down => {} // stopped by an operator: stays down
            DynoState::Crashed => {
                let crashed_at = timefmt::parse(&d.updated_at).unwrap_or(now);
                let due = crashed_at + restart_delay(d.restarts);
                if now >= due {
                    out.actions.push(Action::Restart { dyno: d.id });
                } else {
                    let wait = Duration::try_from(due - now).unwrap_or(Duration::ZERO);
                    out.wake_in = Some(out.wake_in.map_or(wait, |w| w.min(wait)));
                }
            }
        }
    }

    let Some(release) = desired.release else { return out };
    for p in &desired.processes {
        for num in 1..=i64::from(p.count) {
            let present = dynos.iter().any(|d| {
                d.process_type == p.process_type
                    && d.num == num
                    && d.release == release
                    && d.state != DynoState::Stopping
            });
            if !present {
                out.actions.push(Action::Start {
                    process_type: p.process_type.clone(),
                    num,
                    command: p.command.clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    fn dyno(id: i64, name: &str, release: i64, state: DynoState) -> DynoRow {
        let (process_type, num) = name.split_once('.').unwrap();
        DynoRow {
            id,
            app: "hello".into(),
            process_type: process_type.into(),
            num: num.parse().unwrap(),
            release,
            command: "run".into(),
            state,
            port: None,
            pid: Some(100 + id as i32),
            pid_start: Some(1),
            shim_pid: Some(200 + id as i32),
            shim_start: Some(1),
            restarts: 0,
            stopped: state == DynoState::Down,
            started_at: Some(timefmt::stamp(t(0))),
            updated_at: timefmt::stamp(t(0)),
        }
    }

    fn desired(release: i64, procs: &[(&str, u32)]) -> Desired {
        Desired {
            release: Some(release),
            processes: procs
                .iter()
                .map(|(n, c)| ProcessSpec { process_type: n.to_string(), command: "run".into(), count: *c })
                .collect(),
        }
    }

    fn start(name: &str) -> Action {
        let (t, n) = name.split_once('.').unwrap();
        Action::Start { process_type: t.into(), num: n.parse().unwrap(), command: "run".into() }
    }

    #[test]
    fn starts_the_formation_from_nothing() {
        let p = plan(&desired(1, &[("web", 2), ("worker", 1), ("clock", 0)]), &[], t(0));
        assert_eq!(p.actions, [start("web.1"), start("web.2"), start("worker.1")]);
        assert_eq!(p.wake_in, None);
    }

    #[test]
    fn nothing_runs_before_the_first_release() {
        let p = plan(&Desired::default(), &[], t(0));
        assert!(p.actions.is_empty());
    }

    #[test]
    fn a_converged_app_needs_nothing() {
        let dynos = [dyno(1, "web.1", 1, DynoState::Up), dyno(2, "web.2", 1, DynoState::Starting)];
        assert_eq!(plan(&desired(1, &[("web", 2)]), &dynos, t(5)), Plan::default());
    }

    #[test]
    fn scaling_down_stops_the_highest_numbers_only() {
        let dynos = [
            dyno(1, "web.1", 1, DynoState::Up),
            dyno(2, "web.2", 1, DynoState::Up),
            dyno(3, "web.3", 1, DynoState::Up),
        ];
        let p = plan(&desired(1, &[("web", 1)]), &dynos, t(5));
        assert_eq!(p.actions, [Action::Stop { dyno: 2 }, Action::Stop { dyno: 3 }]);
    }

    #[test]
    fn scaling_up_leaves_running_dynos_alone() {
        let dynos = [dyno(1, "web.1", 1, DynoState::Up)];
        let p = plan(&desired(1, &[("web", 3)]), &dynos, t(5));
        assert_eq!(p.actions, [start("web.2"), start("web.3")]);
    }

    #[test]
    fn dynos_of_other_releases_and_removed_types_go() {
        let dynos = [
            dyno(1, "web.1", 1, DynoState::Up),
            dyno(2, "web.1", 2, DynoState::Up),
            dyno(3, "old.1", 2, DynoState::Crashed),
        ];
        let p = plan(&desired(2, &[("web", 1)]), &dynos, t(5));
        assert_eq!(p.actions, [Action::Stop { dyno: 1 }, Action::Forget { dyno: 3 }]);
    }

    #[test]
    fn stopping_dynos_are_left_to_finish_and_do_not_count() {
        let dynos = [dyno(1, "web.1", 1, DynoState::Stopping)];
        let p = plan(&desired(1, &[("web", 1)]), &dynos, t(5));
        assert_eq!(p.actions, [start("web.1")]);
    }

    #[test]
    fn operator_stopped_dynos_stay_down_until_unwanted() {
        let dynos = [dyno(1, "web.1", 1, DynoState::Down)];
        assert!(plan(&desired(1, &[("web", 1)]), &dynos, t(5)).actions.is_empty());
        assert_eq!(plan(&desired(1, &[("web", 0)]), &dynos, t(5)).actions, [Action::Forget { dyno: 1 }]);
    }

    #[test]
    fn crashes_restart_at_once_then_back_off() {
        let mut d = dyno(1, "web.1", 1, DynoState::Crashed);
        let want = desired(1, &[("web", 1)]);
        assert_eq!(plan(&want, std::slice::from_ref(&d), t(0)).actions, [Action::Restart { dyno: 1 }]);
        d.restarts = 3; // crashed three times in a row: waits 4 s from the crash
        let early = plan(&want, std::slice::from_ref(&d), t(1));
        assert!(early.actions.is_empty());
        assert_eq!(early.wake_in, Some(Duration::from_secs(3)));
        assert_eq!(plan(&want, std::slice::from_ref(&d), t(4)).actions, [Action::Restart { dyno: 1 }]);
    }

    #[test]
    fn of_two_live_rows_for_one_name_the_newest_wins() {
        let dynos = [dyno(4, "web.1", 1, DynoState::Up), dyno(9, "web.1", 1, DynoState::Up)];
        assert_eq!(plan(&desired(1, &[("web", 1)]), &dynos, t(5)).actions, [Action::Stop { dyno: 4 }]);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let secs: Vec<u64> = (0..12).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(secs, [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(restart_delay(1000), MAX_BACKOFF);
    }

    #[test]
    fn health_resets_after_a_minute_up() {
        assert!(was_healthy(Some(&timefmt::stamp(t(0))), t(60)));
        assert!(!was_healthy(Some(&timefmt::stamp(t(0))), t(59)));
        assert!(!was_healthy(None, t(60)));
    }
}
