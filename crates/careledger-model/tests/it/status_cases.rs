//! Hand-worked histories: each case writes out the expected episodes and why.

use careledger_model::regions;
use careledger_model::status::{
    EventKind::*, LifeEvent, RuleParams, StatusEpisode, Woman, derive_episodes,
};
use chrono::NaiveDate;

use crate::{TOWN, VILLAGE_A, VILLAGE_B, d};

fn ev(date: &str, kind: careledger_model::status::EventKind) -> LifeEvent {
    LifeEvent::new(d(date), kind)
}

fn run_with(
    events: &[LifeEvent],
    params: &RuleParams,
    birth: Option<NaiveDate>,
) -> Vec<StatusEpisode> {
    let rural = |c: &str| regions().is_rural_village(c);
    let w = Woman {
        base_region: Some(VILLAGE_A),
        initially_married: true,
        birth_date: birth,
        events,
    };
    derive_episodes(&w, &rural, params)
}

fn run(events: &[LifeEvent]) -> Vec<StatusEpisode> {
    run_with(events, &RuleParams::default(), None)
}

/// (start, end, entry, exit) of each episode.
fn shape(
    eps: &[StatusEpisode],
) -> Vec<(String, Option<String>, &'static str, Option<&'static str>)> {
    eps.iter()
        .map(|e| {
            (
                e.start.to_string(),
                e.end.map(|x| x.to_string()),
                e.entry_reason,
                e.exit_reason,
            )
        })
        .collect()
}

fn ep(
    start: &str,
    end: Option<&str>,
    entry: &'static str,
    exit: Option<&'static str>,
) -> (String, Option<String>, &'static str, Option<&'static str>) {
    (start.to_string(), end.map(str::to_string), entry, exit)
}

#[test]
fn returns_after_five_months_never_enters() {
    // Left 2023-03-01, back 2023-08-01: five months < six. No episode.
    let eps = run(&[
        ev("2023-03-01", SpouseDeparted),
        ev("2023-08-01", SpouseReturned),
    ]);
    assert!(eps.is_empty(), "{eps:?}");
}

#[test]
fn six_months_exactly_enters_on_that_day() {
    // Left 2023-02-10 → enters 2023-08-10 (departure + 6 calendar months); still away.
    let eps = run(&[ev("2023-02-10", SpouseDeparted)]);
    assert_eq!(
        shape(&eps),
        vec![ep("2023-08-10", None, "absence_6_months", None)]
    );
    assert_eq!(eps[0].region_at_start.as_deref(), Some(VILLAGE_A));
}

#[test]
fn returns_the_day_before_six_months_never_enters() {
    // Return on 2023-08-09 ends the absence [02-10, 08-09): the 6-month day 08-10 is not reached.
    let eps = run(&[
        ev("2023-02-10", SpouseDeparted),
        ev("2023-08-09", SpouseReturned),
    ]);
    assert!(eps.is_empty(), "{eps:?}");
    // Returning on the 6-month day itself: [08-10, 08-10) is empty, so still no episode.
    let eps = run(&[
        ev("2023-02-10", SpouseDeparted),
        ev("2023-08-10", SpouseReturned),
    ]);
    assert!(eps.is_empty(), "{eps:?}");
}

#[test]
fn spring_festival_visit_of_20_days_does_not_split() {
    // Left 2022-03-01 → in from 2022-09-01. Home 2023-01-15, off again 2023-02-04 (20 days ≤ 30):
    // one absence from 2022-03-01; she stays in through the visit. Final return 2023-10-01.
    let eps = run(&[
        ev("2022-03-01", SpouseDeparted),
        ev("2023-01-15", SpouseReturned),
        ev("2023-02-04", SpouseDeparted),
        ev("2023-10-01", SpouseReturned),
    ]);
    assert_eq!(
        shape(&eps),
        vec![ep(
            "2022-09-01",
            Some("2023-10-01"),
            "absence_6_months",
            Some("spouse_returned")
        )]
    );
}

#[test]
fn short_visit_before_six_months_keeps_counting_from_first_departure() {
    // Left 2023-01-01, home 2023-03-01..2023-03-21 (20 days), away again: the six months run
    // from 2023-01-01, so she enters 2023-07-01, not 2023-09-21.
    let eps = run(&[
        ev("2023-01-01", SpouseDeparted),
        ev("2023-03-01", SpouseReturned),
        ev("2023-03-21", SpouseDeparted),
    ]);
    assert_eq!(
        shape(&eps),
        vec![ep("2023-07-01", None, "absence_6_months", None)]
    );
}

#[test]
fn redeparture_after_40_days_starts_a_new_absence() {
    // Left 2022-03-01 → in 2022-09-01. Back 2023-01-10 (exit). Off again 2023-02-19 (40 days > 30):
    // a new absence; she re-enters 2023-08-19.
    let eps = run(&[
        ev("2022-03-01", SpouseDeparted),
        ev("2023-01-10", SpouseReturned),
        ev("2023-02-19", SpouseDeparted),
    ]);
    assert_eq!(
        shape(&eps),
        vec![
            ep(
                "2022-09-01",
                Some("2023-01-10"),
                "absence_6_months",
                Some("spouse_returned")
            ),
            ep("2023-08-19", None, "absence_6_months", None),
        ]
    );
}

#[test]
fn visit_of_exactly_30_days_is_still_short() {
    // Back 2023-01-10, off 2023-02-09: 30 days, bridged (≤ short_visit_days).
    let eps = run(&[
        ev("2022-03-01", SpouseDeparted),
        ev("2023-01-10", SpouseReturned),
        ev("2023-02-09", SpouseDeparted),
    ]);
    assert_eq!(
        shape(&eps),
        vec![ep("2022-09-01", None, "absence_6_months", None)]
    );
}

#[test]
fn divorce_during_absence_exits_and_ends_the_absence() {
    // Left 2021-05-01 → in 2021-11-01. Divorced 2022-04-15: exit (divorced). She remarries
    // 2022-10-01; nothing re-enters her without a new departure.
    let eps = run(&[
        ev("2021-05-01", SpouseDeparted),
        ev("2022-04-15", Divorced),
        ev("2022-10-01", Married),
    ]);
    assert_eq!(
        shape(&eps),
        vec![ep(
            "2021-11-01",
            Some("2022-04-15"),
            "absence_6_months",
            Some("divorced")
        )]
    );
}

#[test]
fn moving_to_town_exits_and_moving_back_reenters() {
    // Left 2021-01-01 → in 2021-07-01. Moved to town (urban residents' committee) 2021-12-01:
    // exit moved_out. Moved back to a rural village 2022-03-05 while he is still away:
    // re-entry on that day, reason moved_in.
    let eps = run(&[
        ev("2021-01-01", SpouseDeparted),
        LifeEvent::moved_in(d("2021-12-01"), TOWN),
        LifeEvent::moved_in(d("2022-03-05"), VILLAGE_B),
    ]);
    assert_eq!(
        shape(&eps),
        vec![
            ep(
                "2021-07-01",
                Some("2021-12-01"),
                "absence_6_months",
                Some("moved_out")
            ),
            ep("2022-03-05", None, "moved_in", None),
        ]
    );
    assert_eq!(eps[0].region_at_end.as_deref(), Some(VILLAGE_A));
    assert_eq!(eps[1].region_at_start.as_deref(), Some(VILLAGE_B));
}

#[test]
fn moved_out_event_exits() {
    // A moved_out (to a city, no village code) is "not rural" from that day.
    let eps = run(&[ev("2021-01-01", SpouseDeparted), ev("2021-09-30", MovedOut)]);
    assert_eq!(
        shape(&eps),
        vec![ep(
            "2021-07-01",
            Some("2021-09-30"),
            "absence_6_months",
            Some("moved_out")
        )]
    );
}

#[test]
fn move_between_rural_villages_keeps_the_episode() {
    // Village A → village B during the episode: one episode, region at end is B.
    let eps = run(&[
        ev("2021-01-01", SpouseDeparted),
        LifeEvent::moved_in(d("2021-10-01"), VILLAGE_B),
        ev("2022-02-01", SpouseReturned),
    ]);
    assert_eq!(
        shape(&eps),
        vec![ep(
            "2021-07-01",
            Some("2022-02-01"),
            "absence_6_months",
            Some("spouse_returned")
        )]
    );
    assert_eq!(eps[0].region_at_start.as_deref(), Some(VILLAGE_A));
    assert_eq!(eps[0].region_at_end.as_deref(), Some(VILLAGE_B));
}

#[test]
fn living_in_town_at_six_months_enters_later_on_moving_in() {
    // Base residence A, but moved to town 2021-02-01 before the 6-month day (2021-07-01):
    // not in at 07-01. Moves to village B 2021-09-15 while he is away: enters then (moved_in).
    let eps = run(&[
        ev("2021-01-01", SpouseDeparted),
        LifeEvent::moved_in(d("2021-02-01"), TOWN),
        LifeEvent::moved_in(d("2021-09-15"), VILLAGE_B),
    ]);
    assert_eq!(shape(&eps), vec![ep("2021-09-15", None, "moved_in", None)]);
}

#[test]
fn spouse_died_and_she_died() {
    let eps = run(&[
        ev("2020-01-01", SpouseDeparted),
        ev("2020-12-24", SpouseDied),
    ]);
    assert_eq!(
        shape(&eps),
        vec![ep(
            "2020-07-01",
            Some("2020-12-24"),
            "absence_6_months",
            Some("spouse_died")
        )]
    );
    let eps = run(&[ev("2020-01-01", SpouseDeparted), ev("2021-03-03", Died)]);
    assert_eq!(
        shape(&eps),
        vec![ep(
            "2020-07-01",
            Some("2021-03-03"),
            "absence_6_months",
            Some("died")
        )]
    );
}

#[test]
fn month_end_departure_clamps_to_month_end() {
    // 2023-08-31 + 6 months = 2024-02-29 (leap year, clamped to the month's last day).
    let eps = run(&[ev("2023-08-31", SpouseDeparted)]);
    assert_eq!(
        shape(&eps),
        vec![ep("2024-02-29", None, "absence_6_months", None)]
    );
}

#[test]
fn marriage_to_a_long_absent_man_enters_on_the_wedding_day() {
    // Not married at the start; his departure is recorded 2022-01-01 and they marry 2022-09-09
    // (he is away 8 months by then): she enters on the wedding day, reason married.
    let rural = |c: &str| regions().is_rural_village(c);
    let events = [ev("2022-01-01", SpouseDeparted), ev("2022-09-09", Married)];
    let w = Woman {
        base_region: Some(VILLAGE_A),
        initially_married: false,
        birth_date: None,
        events: &events,
    };
    let eps = derive_episodes(&w, &rural, &RuleParams::default());
    assert_eq!(shape(&eps), vec![ep("2022-09-09", None, "married", None)]);
}

#[test]
fn divorce_between_return_and_redeparture_blocks_the_bridge() {
    // Back 2023-01-10, divorced 2023-01-20, remarried 2023-01-25, "spouse" left 2023-02-01 (22 days
    // after the return): another husband's absence, counted from 2023-02-01 → in 2023-08-01.
    let eps = run(&[
        ev("2022-03-01", SpouseDeparted),
        ev("2023-01-10", SpouseReturned),
        ev("2023-01-20", Divorced),
        ev("2023-01-25", Married),
        ev("2023-02-01", SpouseDeparted),
    ]);
    assert_eq!(
        shape(&eps),
        vec![
            ep(
                "2022-09-01",
                Some("2023-01-10"),
                "absence_6_months",
                Some("spouse_returned")
            ),
            ep("2023-08-01", None, "absence_6_months", None),
        ]
    );
}

#[test]
fn age_bounds_when_set() {
    // Born 1964-05-10, bounds 20–59: she turns 60 on 2024-05-10 and leaves then (age_limit).
    let params = RuleParams {
        min_age: Some(20),
        max_age: Some(59),
        ..RuleParams::default()
    };
    let eps = run_with(
        &[ev("2023-01-01", SpouseDeparted)],
        &params,
        Some(d("1964-05-10")),
    );
    assert_eq!(
        shape(&eps),
        vec![ep(
            "2023-07-01",
            Some("2024-05-10"),
            "absence_6_months",
            Some("age_limit")
        )]
    );
    assert_eq!(params.rule_version(), "r1;m6;v30;a20-59");
    assert_eq!(RuleParams::default().rule_version(), "r1;m6;v30");
}

#[test]
fn duplicate_reports_of_one_event_change_nothing() {
    // Two departments report the same departure.
    let eps = run(&[
        ev("2023-01-01", SpouseDeparted),
        ev("2023-01-01", SpouseDeparted),
        ev("2023-02-01", SpouseDeparted),
    ]);
    assert_eq!(
        shape(&eps),
        vec![ep("2023-07-01", None, "absence_6_months", None)]
    );
}
