//! Cron expressions read in a time zone, and the fire times due in a window.
//!
//! Five-field crons (`0 7 * * *`, `0 */3 * * 1-5`) are what operators write, with Unix meanings:
//! minute 0-59, hour 0-23, day of month 1-31, month 1-12, day of week 0-7 (0 and 7 are Sunday).
//! The `cron` crate wants a seconds field and counts days of the week 1-7 from Sunday, so the
//! fields are checked here (errors name the field in the user's own form) and the day of week is
//! translated. Fire times are computed in the dataset's zone (a daily 07:00 in `America/Bogota`
//! stays 07:00 local) and handled as UTC instants everywhere else.

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
        let bad = |reason: String| ScheduleError::BadCron {
            cron: cron.trim().to_owned(),
            reason,
        };
        let trimmed = cron.trim();
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        let expression = if fields.len() == 5 {
            unix_expression(&fields).map_err(bad)?
        } else {
            trimmed.to_owned()
        };
        let schedule = cron::Schedule::from_str(&expression).map_err(|e| {
            // The crate's message repeats the expression it was given (with our seconds field):
            // keep only its reason.
            let text = e.to_string();
            let reason = text.rsplit('^').next().unwrap_or(&text).trim().to_owned();
            bad(reason)
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

/// The five Unix fields as the `cron` crate's seven-field expression (seconds first), each field
/// checked against its Unix range.
fn unix_expression(fields: &[&str]) -> Result<String, String> {
    const FIELDS: [(&str, &str, u32, u32); 5] = [
        ("minute", "minutes", 0, 59),
        ("hour", "hours", 0, 23),
        ("day-of-month", "days of the month", 1, 31),
        ("month", "months", 1, 12),
        ("day-of-week", "days of the week (Sunday 0 or 7)", 0, 7),
    ];
    let mut out = vec!["0".to_owned()];
    for (field, (name, plural, low, high)) in fields.iter().zip(FIELDS) {
        for number in field
            .split([',', '-', '/'])
            .enumerate()
            .filter(|(_, part)| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
        {
            let (_, part) = number;
            let value: u32 = part
                .parse()
                .map_err(|_| format!("the {name} field '{field}' is not a number"))?;
            let is_step = field
                .find('/')
                .is_some_and(|slash| field[slash + 1..] == *part);
            if !is_step && (value < low || value > high) {
                return Err(format!(
                    "the {name} field is {field}, but {plural} are {low}-{high}"
                ));
            }
        }
        out.push(if name == "day-of-week" {
            day_of_week(field)
        } else {
            (*field).to_owned()
        });
    }
    Ok(out.join(" "))
}

/// A Unix day-of-week field (0-7, Sunday = 0 or 7) in the crate's numbering (1-7, Sunday = 1).
/// Names (`MON-FRI`) and `*` mean the same in both.
fn day_of_week(field: &str) -> String {
    let shift = |n: &str| match n.parse::<u32>() {
        Ok(n) => ((n % 7) + 1).to_string(),
        Err(_) => n.to_owned(),
    };
    field
        .split(',')
        .map(|item| {
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => (range, Some(step)),
                None => (item, None),
            };
            let with_step = |r: String| match step {
                Some(step) => format!("{r}/{step}"),
                None => r,
            };
            match range.split_once('-') {
                // `1-7` (Monday to Sunday) becomes `2-7,1`: Sunday is first in the crate.
                Some((from, "7")) if from != "0" && from != "7" => {
                    format!("{},1", with_step(format!("{}-7", shift(from))))
                }
                Some((from, to)) => with_step(format!("{}-{}", shift(from), shift(to))),
                None if range == "*" => with_step("*".into()),
                None => with_step(shift(range)),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
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
    fn days_of_week_have_their_unix_meaning() {
        // 2026-11-22 is a Sunday.
        let monday = CronSchedule::parse("0 7 * * 1", None).unwrap();
        assert_eq!(
            monday.next_after(at(8, 0)),
            Some(at(7, 0) + chrono::Duration::days(1))
        );
        for sunday in ["0 7 * * 0", "0 7 * * 7", "0 7 * * SUN"] {
            let cron = CronSchedule::parse(sunday, None).unwrap();
            assert_eq!(cron.next_after(at(6, 0)), Some(at(7, 0)), "{sunday}");
        }
        let weekdays = CronSchedule::parse("0 7 * * 1-5", None).unwrap();
        assert_eq!(
            weekdays.next_after(at(6, 0)),
            Some(at(7, 0) + chrono::Duration::days(1))
        );
        let all_week = CronSchedule::parse("0 7 * * 1-7", None).unwrap();
        assert_eq!(all_week.next_after(at(6, 0)), Some(at(7, 0)));
        assert_eq!(day_of_week("1-5/2,0"), "2-6/2,1");
    }

    #[test]
    fn bad_crons_and_zones_are_named() {
        let e = CronSchedule::parse("0 25 * * *", None).unwrap_err();
        assert!(
            matches!(e, ScheduleError::BadCron { ref cron, .. } if cron == "0 25 * * *"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "cron '0 25 * * *' is not valid: the hour field is 25, but hours are 0-23"
        );
        let e = CronSchedule::parse("61 * * * *", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("minutes are 0-59"), "{e}");
        let e = CronSchedule::parse("0 0 * 13 *", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("months are 1-12"), "{e}");
        assert!(
            CronSchedule::parse("*/15 * * * *", None).is_ok(),
            "steps are not values"
        );
        assert!(CronSchedule::parse("every day", None).is_err());
        assert_eq!(
            CronSchedule::parse("0 7 * * *", Some("Mars/Olympus")).unwrap_err(),
            ScheduleError::BadTimeZone("Mars/Olympus".into())
        );
    }
}
