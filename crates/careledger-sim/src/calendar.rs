//! Dates and draws: the Spring Festival, day arithmetic, and the few distributions the
//! simulation needs (rand 0.9 without `rand_distr`).

use chrono::{Datelike, Months, NaiveDate, TimeDelta};
use rand::Rng;

/// Spring Festival (春节, first day of the lunar year), 2005–2040.
const SPRING_FESTIVALS: [(i32, u32, u32); 36] = [
    (2005, 2, 9),
    (2006, 1, 29),
    (2007, 2, 18),
    (2008, 2, 7),
    (2009, 1, 26),
    (2010, 2, 14),
    (2011, 2, 3),
    (2012, 1, 23),
    (2013, 2, 10),
    (2014, 1, 31),
    (2015, 2, 19),
    (2016, 2, 8),
    (2017, 1, 28),
    (2018, 2, 16),
    (2019, 2, 5),
    (2020, 1, 25),
    (2021, 2, 12),
    (2022, 2, 1),
    (2023, 1, 22),
    (2024, 2, 10),
    (2025, 1, 29),
    (2026, 2, 17),
    (2027, 2, 6),
    (2028, 1, 26),
    (2029, 2, 13),
    (2030, 2, 3),
    (2031, 1, 23),
    (2032, 2, 11),
    (2033, 1, 31),
    (2034, 2, 19),
    (2035, 2, 8),
    (2036, 1, 28),
    (2037, 2, 15),
    (2038, 2, 4),
    (2039, 1, 24),
    (2040, 2, 12),
];

/// The Spring Festival of `year` (5 February outside the table's years).
pub(crate) fn spring_festival(year: i32) -> NaiveDate {
    let (y, m, d) = SPRING_FESTIVALS
        .iter()
        .copied()
        .find(|(y, _, _)| *y == year)
        .unwrap_or((year, 2, 5));
    NaiveDate::from_ymd_opt(y, m, d).expect("festival dates are valid")
}

pub(crate) fn plus(d: NaiveDate, days: i64) -> NaiveDate {
    d.checked_add_signed(TimeDelta::days(days)).unwrap_or(d)
}

/// `d` moved by whole years (29 February clamps to the 28th).
pub(crate) fn add_years(d: NaiveDate, years: i32) -> NaiveDate {
    let months = Months::new(years.unsigned_abs() * 12);
    if years >= 0 {
        d.checked_add_months(months)
    } else {
        d.checked_sub_months(months)
    }
    .unwrap_or(d)
}

pub(crate) fn first_of_month(d: NaiveDate) -> NaiveDate {
    d.with_day(1).expect("day 1 exists")
}

pub(crate) fn next_month(d: NaiveDate) -> NaiveDate {
    first_of_month(d)
        .checked_add_months(Months::new(1))
        .expect("in range")
}

/// Whole days from `a` to `b`.
pub(crate) fn days(a: NaiveDate, b: NaiveDate) -> i64 {
    (b - a).num_days()
}

/// A uniform day in `[a, b]` (`a` when the range is empty).
pub(crate) fn between(rng: &mut impl Rng, a: NaiveDate, b: NaiveDate) -> NaiveDate {
    let n = days(a, b);
    if n <= 0 {
        a
    } else {
        plus(a, rng.random_range(0..=n))
    }
}

/// Days until an event of a Poisson process with `per_year` events a year (at least 1).
pub(crate) fn exp_days(rng: &mut impl Rng, per_year: f64) -> i64 {
    if per_year <= 0.0 {
        return i64::MAX / 4;
    }
    let u: f64 = rng.random();
    let years = -(1.0 - u).ln() / per_year;
    ((years * 365.25) as i64).clamp(1, i64::MAX / 4)
}

/// A Poisson draw (Knuth; the rates here are small).
pub(crate) fn poisson(rng: &mut impl Rng, lambda: f64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    let limit = (-lambda).exp();
    let mut k = 0;
    let mut p: f64 = rng.random();
    while p > limit && k < 200 {
        k += 1;
        p *= rng.random::<f64>();
    }
    k
}

/// One item by weight.
pub(crate) fn weighted<T: Copy>(rng: &mut impl Rng, items: &[(T, f64)]) -> T {
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random::<f64>() * total;
    for (item, w) in items {
        if x < *w {
            return *item;
        }
        x -= w;
    }
    items.last().expect("non-empty weights").0
}

/// Reporting lag in days: most reports within `typical` days (skewed to the short end), a
/// share `late` of them months later.
pub(crate) fn report_lag(rng: &mut impl Rng, typical: i64, late: f64) -> i64 {
    if rng.random_bool(late) {
        rng.random_range(60..=240)
    } else {
        let u: f64 = rng.random();
        (u * u * typical as f64) as i64
    }
}

/// SplitMix64 finaliser: a well-mixed 64-bit hash of two words.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_add(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stable hash of a string (FNV-1a), for mixing names into seeds.
pub(crate) fn name_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}
