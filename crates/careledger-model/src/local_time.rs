//! The time zone that governs every "day" careledger speaks of: whether a date is in the
//! future at ingest, what a date-only `known_at` means, the lag and frozen periods of source
//! health, the day a token expires. Guangxi keeps Beijing time, so the default is
//! `Asia/Shanghai`; an operator elsewhere sets another IANA name.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};

/// One configured IANA time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalZone(chrono_tz::Tz);

impl Default for LocalZone {
    fn default() -> LocalZone {
        LocalZone(chrono_tz::Asia::Shanghai)
    }
}

impl LocalZone {
    /// The default zone's name.
    pub const DEFAULT: &'static str = "Asia/Shanghai";

    /// An IANA name such as `Asia/Shanghai` or `UTC`.
    pub fn parse(name: &str) -> Result<LocalZone, String> {
        name.parse::<chrono_tz::Tz>().map(LocalZone).map_err(|_| {
            format!("{name:?} is not an IANA time zone name (e.g. Asia/Shanghai, UTC)")
        })
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// The zone's offset from UTC at an instant, in seconds (local minus UTC).
    pub fn offset_seconds(&self, t: DateTime<Utc>) -> i32 {
        use chrono::Offset;
        t.with_timezone(&self.0).offset().fix().local_minus_utc()
    }

    /// The local calendar day of an instant.
    pub fn date_of(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.0).date_naive()
    }

    /// Today, here.
    pub fn today(&self) -> NaiveDate {
        self.date_of(Utc::now())
    }

    /// The instant a local day begins (its first valid local time, should a zone skip
    /// midnight).
    pub fn start_of(&self, d: NaiveDate) -> DateTime<Utc> {
        let midnight = d.and_hms_opt(0, 0, 0).expect("midnight");
        (0..=24)
            .find_map(|h| {
                self.0
                    .from_local_datetime(&(midnight + chrono::TimeDelta::hours(h)))
                    .earliest()
            })
            .map_or_else(|| midnight.and_utc(), |t| t.with_timezone(&Utc))
    }

    /// An instant as the local time of day with its offset: `2020-01-01 00:00:00 +08:00`.
    pub fn display(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.0)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string()
    }

    /// An instant: RFC 3339, or a date `YYYY-MM-DD`, which means the start of that local day.
    pub fn parse_instant(&self, text: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .ok()
                    .map(|d| self.start_of(d))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beijing_days_begin_at_16_utc() {
        let z = LocalZone::default();
        let d = NaiveDate::from_ymd_opt(2024, 7, 10).unwrap();
        assert_eq!(
            z.start_of(d).to_rfc3339(),
            "2024-07-09T16:00:00+00:00",
            "a date-only known_at is the start of the day in Beijing"
        );
        assert_eq!(z.parse_instant("2024-07-10"), Some(z.start_of(d)));
        // 07:30 Beijing on the 10th is still the 9th in UTC: the local day is the 10th.
        let t = "2024-07-09T23:30:00Z".parse().unwrap();
        assert_eq!(z.date_of(t), d);
        assert_eq!(
            LocalZone::parse("UTC").unwrap().date_of(t),
            d.pred_opt().unwrap()
        );
        assert!(LocalZone::parse("Mars/Olympus").is_err());
        assert_eq!(z.display(z.start_of(d)), "2024-07-10 00:00:00 +08:00");
    }
}
