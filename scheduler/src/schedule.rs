//! Cron expressions read in a time zone, and the fire times due in a window.
//!
//! Five-field crons (`0 7 * * *`, `0 */3 * * *`) are what operators write; the `cron` crate wants a
//! seconds field, so one is added. Fire times are computed in the dataset's zone (a daily 07:00 in
//! `America/Bogota` stays 07:00 local) and handled as UTC instants everywhere else.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("cron '{cron}' is not valid: {reason}")]
    BadCron { cron: String, reason: String },
    #[error("time zone '{0}' is not an IANA zone name (e.g. 'UTC', 'America/Bogota')")]
    BadTimeZone(String),
}

/// A parsed cron in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    schedule: cron::Schedule,
    zone: Tz,
}

impl CronSchedule {
    pub fn parse(cron: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let zone = match time_zone.map(str::trim).filter(|z| !z.is_empty()) {
            None => Tz::UTC,
            Some(name) => {
                Tz::from_str(name).map_err(|_| ScheduleError::BadTimeZone(name.into()))?
            }
        };
        let trimmed = cron.trim();
        let fields = trimmed.split_whitespace().count();
        let expression = if fields == 5 {
            format!("0 {trimmed}")
        } else {
            trimmed.to_owned()
        };
        let schedule =
            cron::Schedule::from_str(&expression).map_err(|e| ScheduleError::BadCron {
                cron: cron.to_owned(),
                reason: e.to_string(),
            })?;
        // A cron that never fires again (e.g. a past year) is a mistake, not a schedule.
        if schedule.upcoming(zone).next().is_none() {
            return Err(ScheduleError::BadCron {
                cron: cron.to_owned(),
                reason: "it never fires".into(),
            });
        }
        Ok(Self { schedule, zone })
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&self.zone))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The latest fire time in `(after, until]`, and how many fell in that window. A scheduler
    /// that was down for several fire times enqueues the latest once, not each of them.
    pub fn latest_due(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, usize)> {
        let mut latest = None;
        let mut missed = 0;
        for fire in self.schedule.after(&after.with_timezone(&self.zone)) {
            let fire = fire.with_timezone(&Utc);
            if fire > until {
                break;
            }
            latest = Some(fire);
            missed += 1;
            // Bound the walk for very frequent crons over a long outage.
            if missed >= 100_000 {
                break;
            }
        }
        latest.map(|fire| (fire, missed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, 0).unwrap()
    }

    #[test]
    fn five_field_crons_and_zones() {
        let daily = CronSchedule::parse("0 7 * * *", None).unwrap();
        assert_eq!(daily.next_after(at(6, 0)), Some(at(7, 0)));
        assert_eq!(
            daily.next_after(at(7, 0)),
            Some(at(7, 0) + chrono::Duration::days(1))
        );
        // 07:00 in Bogotá (UTC-5) is 12:00 UTC.
        let bogota = CronSchedule::parse("0 7 * * *", Some("America/Bogota")).unwrap();
        assert_eq!(bogota.next_after(at(6, 0)), Some(at(12, 0)));
        let every_three = CronSchedule::parse("0 */3 * * *", None).unwrap();
        assert_eq!(every_three.next_after(at(4, 10)), Some(at(6, 0)));
    }

    #[test]
    fn missed_fires_collapse_to_the_latest() {
        let every_three = CronSchedule::parse("0 */3 * * *", None).unwrap();
        assert_eq!(
            every_three.latest_due(at(5, 0), at(13, 30)),
            Some((at(12, 0), 3))
        );
        assert_eq!(every_three.latest_due(at(12, 0), at(13, 30)), None);
        // The window is open at the start and closed at the end.
        assert_eq!(
            every_three.latest_due(at(11, 59), at(12, 0)),
            Some((at(12, 0), 1))
        );
    }

    #[test]
    fn bad_crons_and_zones_are_named() {
        let e = CronSchedule::parse("0 25 * * *", None).unwrap_err();
        assert!(
            matches!(e, ScheduleError::BadCron { ref cron, .. } if cron == "0 25 * * *"),
            "{e}"
        );
        assert!(CronSchedule::parse("every day", None).is_err());
        assert_eq!(
            CronSchedule::parse("0 7 * * *", Some("Mars/Olympus")).unwrap_err(),
            ScheduleError::BadTimeZone("Mars/Olympus".into())
        );
    }
}
