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
        marital_status: Some("20"),
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
fn divorce_during_absence_exits_and_a_remarriage_while_he_is_still_away_reenters() {
    // Left 2021-05-01 → in 2021-11-01. Divorced 2022-04-15: exit (divorced). An absence is
    // made of departures and returns alone (docs/status-rule.md), so with no return recorded
    // it is still running when she marries again on 2022-10-01: from that day all five
    // conditions hold again (absence since 2021-05-01 ≥ 6 months, married, alive, rural), and
    // she re-enters for the condition that changed: married. (Rule version 1 ended the
    // absence at the divorce and kept her out.)
    let eps = run(&[
        ev("2021-05-01", SpouseDeparted),
        ev("2022-04-15", Divorced),
        ev("2022-10-01", Married),
    ]);
    assert_eq!(
        shape(&eps),
        vec![
            ep(
                "2021-11-01",
                Some("2022-04-15"),
                "absence_6_months",
                Some("divorced")
            ),
            ep("2022-10-01", None, "married", None),
        ]
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
        marital_status: Some("10"),
        birth_date: None,
        events: &events,
    };
    let eps = derive_episodes(&w, &rural, &RuleParams::default());
    assert_eq!(shape(&eps), vec![ep("2022-09-09", None, "married", None)]);
}

#[test]
fn divorce_inside_a_visit_ends_the_episode_and_the_visit_still_bridges() {
    // Left 2022-03-01 → in 2022-09-01. Back 2023-01-10; divorced 2023-01-20, remarried
    // 2023-01-25, a departure 2023-02-01: 22 days after the return, so the return was a visit
    // whatever happened in between, and the absence runs on from 2022-03-01. The divorce ends
    // the episode on its own date and reason; the remarriage on 01-25 (absence running, ≥ 6
    // months) makes her eligible again: a second episode from 2023-01-25, reason married.
    // (Rule version 1 let the marriage change block the bridge: an episode ending 01-10 with
    // spouse_returned, and another from 2023-08-01.)
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
                Some("2023-01-20"),
                "absence_6_months",
                Some("divorced")
            ),
            ep("2023-01-25", None, "married", None),
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
    assert_eq!(params.rule_version(), "r2;m6;v30;a20-59");
    assert_eq!(RuleParams::default().rule_version(), "r2;m6;v30");
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

fn run_marital(code: Option<&str>, events: &[LifeEvent]) -> Vec<StatusEpisode> {
    let rural = |c: &str| regions().is_rural_village(c);
    let w = Woman {
        base_region: Some(VILLAGE_A),
        marital_status: code,
        birth_date: None,
        events,
    };
    derive_episodes(&w, &rural, &RuleParams::default())
}

// ---- Issue 17: a return is for good only if no departure follows within short_visit_days.

#[test]
fn divorce_on_day_9_of_a_19_day_visit_ends_the_episode_divorced() {
    // The case of docs/status-rule.md: left 2023-01-10 → in 2023-07-10 (+6 months). Home
    // 2023-09-01, off again 2023-09-20: 19 days ≤ 30, a visit, so the absence runs on from
    // 2023-01-10. Divorced 2023-09-10 (day 9 of the visit): married fails that day, so the
    // episode ends on 09-10 with reason divorced, not on 09-01 with spouse_returned. After the
    // divorce only a `married` event makes her married again: the departure of 09-20 does
    // not bring her back.
    let eps = run(&[
        ev("2023-01-10", SpouseDeparted),
        ev("2023-09-01", SpouseReturned),
        ev("2023-09-10", Divorced),
        ev("2023-09-20", SpouseDeparted),
    ]);
    assert_eq!(
        shape(&eps),
        vec![ep(
            "2023-07-10",
            Some("2023-09-10"),
            "absence_6_months",
            Some("divorced")
        )]
    );
}

#[test]
fn moving_out_inside_a_visit_ends_the_episode_moved_out_and_moving_back_reenters() {
    // Left 2022-01-01 → in 2022-07-01. Home 2022-09-01, she moves out 2022-09-05, he is off
    // again 2022-09-15 (14 days: a visit). The episode ends 09-05, moved_out. She moves to
    // village B on 2022-10-01 while the (bridged) absence runs: back in that day, moved_in.
    let eps = run(&[
        ev("2022-01-01", SpouseDeparted),
        ev("2022-09-01", SpouseReturned),
        ev("2022-09-05", MovedOut),
        ev("2022-09-15", SpouseDeparted),
        LifeEvent::moved_in(d("2022-10-01"), VILLAGE_B),
    ]);
    assert_eq!(
        shape(&eps),
        vec![
            ep(
                "2022-07-01",
                Some("2022-09-05"),
                "absence_6_months",
                Some("moved_out")
            ),
            ep("2022-10-01", None, "moved_in", None),
        ]
    );
    assert_eq!(eps[0].region_at_end.as_deref(), Some(VILLAGE_A));
    assert_eq!(eps[1].region_at_start.as_deref(), Some(VILLAGE_B));
}

#[test]
fn visit_of_31_days_is_a_return_for_good() {
    // Back 2023-01-10, off 2023-02-10: 31 days > 30. The episode ends on the return; the new
    // absence from 2023-02-10 reaches six months on 2023-08-10.
    let eps = run(&[
        ev("2022-03-01", SpouseDeparted),
        ev("2023-01-10", SpouseReturned),
        ev("2023-02-10", SpouseDeparted),
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
            ep("2023-08-10", None, "absence_6_months", None),
        ]
    );
}

#[test]
fn a_second_return_while_he_is_home_changes_nothing() {
    // Back 2023-01-10 (reported), back 2023-01-25 (reported again by another department, a
    // later date), off 2023-02-05: the visit is counted from the return that ended the
    // absence (26 days ≤ 30), so one episode.
    let eps = run(&[
        ev("2022-03-01", SpouseDeparted),
        ev("2023-01-10", SpouseReturned),
        ev("2023-01-25", SpouseReturned),
        ev("2023-02-05", SpouseDeparted),
    ]);
    assert_eq!(
        shape(&eps),
        vec![ep("2022-09-01", None, "absence_6_months", None)]
    );
}

// ---- Issue 17: several exit causes on one day; same-day order.

#[test]
fn several_exit_causes_on_one_day_take_the_first_by_precedence() {
    // In from 2022-07-01 (left 2022-01-01). Every case ends on 2022-12-01; the reason is the
    // first of died, spouse_died, divorced, moved_out, spouse_returned among the day's causes.
    let day = "2022-12-01";
    let cases: Vec<(Vec<LifeEvent>, &str)> = vec![
        (
            vec![
                ev(day, SpouseReturned),
                ev(day, MovedOut),
                ev(day, Divorced),
                ev(day, SpouseDied),
                ev(day, Died),
            ],
            "died",
        ),
        (
            vec![
                ev(day, SpouseReturned),
                ev(day, MovedOut),
                ev(day, Divorced),
                ev(day, SpouseDied),
            ],
            "spouse_died",
        ),
        (
            vec![
                ev(day, SpouseReturned),
                ev(day, MovedOut),
                ev(day, Divorced),
            ],
            "divorced",
        ),
        (
            vec![ev(day, SpouseReturned), ev(day, MovedOut)],
            "moved_out",
        ),
        // A move into a residents' committee (urban) is a move out of rural residence.
        (
            vec![ev(day, SpouseReturned), LifeEvent::moved_in(d(day), TOWN)],
            "moved_out",
        ),
        (vec![ev(day, SpouseReturned)], "spouse_returned"),
    ];
    for (mut events, reason) in cases {
        events.push(ev("2022-01-01", SpouseDeparted));
        let eps = run(&events);
        assert_eq!(
            shape(&eps),
            vec![ep(
                "2022-07-01",
                Some(day),
                "absence_6_months",
                Some(reason)
            )],
            "{events:?}"
        );
    }
}

#[test]
fn married_applies_first_on_its_day() {
    // Married and divorced on one day: `married` applies first, so she ends the day divorced.
    // Married 2021-12-01 (her first marital event: not married before it), left 2022-01-01,
    // in from 2022-07-01; both on 2022-09-01: exit divorced.
    let eps = run(&[
        ev("2021-12-01", Married),
        ev("2022-01-01", SpouseDeparted),
        ev("2022-09-01", Divorced),
        ev("2022-09-01", Married),
    ]);
    assert_eq!(
        shape(&eps),
        vec![ep(
            "2022-07-01",
            Some("2022-09-01"),
            "absence_6_months",
            Some("divorced")
        )]
    );
    // Never married (10), then married and divorced on 2022-09-01 during a long absence: the
    // day ends not married, so she never enters.
    let eps = run_marital(
        Some("10"),
        &[
            ev("2022-01-01", SpouseDeparted),
            ev("2022-09-01", Married),
            ev("2022-09-01", Divorced),
        ],
    );
    assert!(eps.is_empty(), "{eps:?}");
}

#[test]
fn moves_out_then_in_on_one_day_keep_the_episode() {
    // In from 2022-07-01 in village A. On 2022-09-01 she moves out and into village B (both
    // reported): out then in, she ends the day in B, rural: no exit.
    let eps = run(&[
        ev("2022-01-01", SpouseDeparted),
        LifeEvent::moved_in(d("2022-09-01"), VILLAGE_B),
        ev("2022-09-01", MovedOut),
    ]);
    assert_eq!(
        shape(&eps),
        vec![ep("2022-07-01", None, "absence_6_months", None)]
    );
    assert_eq!(eps[0].region_at_end.as_deref(), Some(VILLAGE_B));
}

#[test]
fn a_return_and_a_departure_on_one_day_are_a_visit_of_no_days() {
    // Returns apply before departures: back and off again on 2022-09-01 is a visit of 0 days,
    // bridged even when short_visit_days is 0.
    let events = [
        ev("2022-01-01", SpouseDeparted),
        ev("2022-09-01", SpouseDeparted),
        ev("2022-09-01", SpouseReturned),
    ];
    for visit in [0, 30] {
        let params = RuleParams {
            short_visit_days: visit,
            ..RuleParams::default()
        };
        let eps = run_with(&events, &params, None);
        assert_eq!(
            shape(&eps),
            vec![ep("2022-07-01", None, "absence_6_months", None)],
            "short_visit_days {visit}"
        );
    }
}

// ---- Issue 17: marital status 90 and missing alike; marital events govern.

#[test]
fn marital_status_90_and_missing_are_presumed_married() {
    // Left 2023-01-01 → in 2023-07-01 for 20, 90 and no value alike (rule version 1 left 90
    // out); 10, 30 and 40 with no marital event: never married to an absent husband.
    let events = [ev("2023-01-01", SpouseDeparted)];
    for code in [Some("20"), Some("21"), Some("90"), None] {
        assert_eq!(
            shape(&run_marital(code, &events)),
            vec![ep("2023-07-01", None, "absence_6_months", None)],
            "{code:?}"
        );
    }
    for code in ["10", "30", "40"] {
        assert!(run_marital(Some(code), &events).is_empty(), "{code}");
    }
}

#[test]
fn marital_events_govern_whatever_the_record_says() {
    // Record 20 (married) now, but her first marital event is `married` on 2023-09-09: before
    // it she was not married. Left 2023-01-01; the absence reaches six months on 07-01 while
    // she is not married; she enters on the wedding day, reason married.
    let eps = run_marital(
        Some("20"),
        &[ev("2023-01-01", SpouseDeparted), ev("2023-09-09", Married)],
    );
    assert_eq!(shape(&eps), vec![ep("2023-09-09", None, "married", None)]);
    // Record 40 (divorced) now, with the divorce on 2023-10-01 among her events: married
    // before it. In from 2023-07-01 to the divorce.
    let eps = run_marital(
        Some("40"),
        &[ev("2023-01-01", SpouseDeparted), ev("2023-10-01", Divorced)],
    );
    assert_eq!(
        shape(&eps),
        vec![ep(
            "2023-07-01",
            Some("2023-10-01"),
            "absence_6_months",
            Some("divorced")
        )]
    );
    // Record 30 (widowed), the husband's death 2023-08-15 among her events: married before.
    let eps = run_marital(
        Some("30"),
        &[
            ev("2023-01-01", SpouseDeparted),
            ev("2023-08-15", SpouseDied),
        ],
    );
    assert_eq!(
        shape(&eps),
        vec![ep(
            "2023-07-01",
            Some("2023-08-15"),
            "absence_6_months",
            Some("spouse_died")
        )]
    );
}

#[test]
fn after_a_divorce_only_a_marriage_makes_her_married_again() {
    // Record 90 (not stated). Husband home 2021-02-01 after a month away; divorced
    // 2021-06-01; a departure 2021-08-01 (a new absence, 181 days after the return) reaches
    // six months on 2022-02-01, but after the divorce the presumption no longer holds: not
    // married, not in. She marries on 2022-05-01 while that absence runs: in from then.
    let eps = run_marital(
        Some("90"),
        &[
            ev("2021-01-01", SpouseDeparted),
            ev("2021-02-01", SpouseReturned),
            ev("2021-06-01", Divorced),
            ev("2021-08-01", SpouseDeparted),
            ev("2022-05-01", Married),
        ],
    );
    assert_eq!(shape(&eps), vec![ep("2022-05-01", None, "married", None)]);
    // The same with no value on the record.
    let same = run_marital(
        None,
        &[
            ev("2021-01-01", SpouseDeparted),
            ev("2021-02-01", SpouseReturned),
            ev("2021-06-01", Divorced),
            ev("2021-08-01", SpouseDeparted),
            ev("2022-05-01", Married),
        ],
    );
    assert_eq!(shape(&same), shape(&eps));
}

#[test]
fn married_before_events_reads_the_first_marital_event() {
    use careledger_model::status::married_before_events;
    assert!(married_before_events(Some("90"), &[]));
    assert!(married_before_events(None, &[]));
    assert!(married_before_events(Some("22"), &[]));
    assert!(!married_before_events(Some("10"), &[]));
    assert!(!married_before_events(
        Some("20"),
        &[ev("2020-01-01", Married)]
    ));
    assert!(married_before_events(
        Some("10"),
        &[ev("2020-01-01", Divorced)]
    ));
    // The first in the order events apply: `married` before `divorced` on one day.
    assert!(!married_before_events(
        Some("40"),
        &[ev("2020-01-01", Divorced), ev("2020-01-01", Married)]
    ));
    // Arrival order does not matter.
    assert!(married_before_events(
        Some("10"),
        &[ev("2021-01-01", Married), ev("2020-01-01", SpouseDied)]
    ));
}
