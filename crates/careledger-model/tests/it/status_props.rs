//! Properties of the status rule over random histories (proptest).

use careledger_model::regions;
use careledger_model::status::{
    EventKind, LifeEvent, RuleParams, StatusEpisode, Woman, derive_episodes,
};
use chrono::{Months, NaiveDate, TimeDelta};
use proptest::prelude::*;

use crate::{TOWN, VILLAGE_A, VILLAGE_B};

const KINDS: [EventKind; 8] = [
    EventKind::SpouseDeparted,
    EventKind::SpouseReturned,
    EventKind::MovedIn,
    EventKind::MovedOut,
    EventKind::Married,
    EventKind::Divorced,
    EventKind::SpouseDied,
    EventKind::Died,
];

fn event_strategy() -> impl Strategy<Value = LifeEvent> {
    // Departures and returns dominate, as in real histories; short gaps make visits likely.
    let kind = prop_oneof![
        6 => Just(EventKind::SpouseDeparted),
        6 => Just(EventKind::SpouseReturned),
        2 => Just(EventKind::MovedIn),
        1 => Just(EventKind::MovedOut),
        1 => (4usize..8).prop_map(|i| KINDS[i]),
    ];
    (0i64..2400, kind, 0usize..3).prop_map(|(day, kind, r)| {
        let date = NaiveDate::from_ymd_opt(2018, 1, 1).unwrap() + TimeDelta::days(day);
        let region = [VILLAGE_A, VILLAGE_B, TOWN][r];
        LifeEvent {
            date,
            kind,
            region_code: (kind == EventKind::MovedIn).then(|| region.to_string()),
        }
    })
}

/// Marital codes on the record: married, not married, not stated (90) and none.
const MARITAL: [Option<&str>; 5] = [Some("20"), Some("10"), Some("40"), Some("90"), None];

fn history() -> impl Strategy<Value = (Vec<LifeEvent>, Option<&'static str>)> {
    (
        prop::collection::vec(event_strategy(), 0..14),
        prop::sample::select(MARITAL.to_vec()),
    )
}

fn derive(events: &[LifeEvent], married: Option<&str>, params: &RuleParams) -> Vec<StatusEpisode> {
    let rural = |c: &str| regions().is_rural_village(c);
    let w = Woman {
        base_region: Some(VILLAGE_A),
        marital_status: married,
        birth_date: None,
        events,
    };
    derive_episodes(&w, &rural, params)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn episodes_never_overlap((events, married) in history()) {
        let eps = derive(&events, married, &RuleParams::default());
        for e in &eps {
            if let Some(end) = e.end {
                prop_assert!(e.start < end, "empty or reversed episode {e:?}");
                prop_assert!(e.exit_reason.is_some());
            } else {
                prop_assert!(e.exit_reason.is_none());
            }
        }
        for w in eps.windows(2) {
            let end = w[0].end.expect("only the last episode may be open");
            prop_assert!(end <= w[1].start, "overlap: {:?} then {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn every_episode_starts_when_an_absence_reaches_six_months_or_later_on_a_move_or_marriage(
        (events, married) in history()
    ) {
        let params = RuleParams::default();
        let six = |d: NaiveDate| d.checked_add_months(Months::new(params.min_absence_months)).unwrap();
        let departures: Vec<NaiveDate> =
            events.iter().filter(|e| e.kind == EventKind::SpouseDeparted).map(|e| e.date).collect();
        for ep in derive(&events, married, &params) {
            let exactly = departures.iter().any(|&d| six(d) == ep.start);
            let later_on_change = departures.iter().any(|&d| six(d) <= ep.start)
                && events.iter().any(|e| {
                    e.date == ep.start && matches!(e.kind, EventKind::MovedIn | EventKind::Married)
                });
            prop_assert!(exactly || later_on_change, "episode {ep:?} from {events:?}");
            match ep.entry_reason {
                "absence_6_months" => prop_assert!(exactly),
                "moved_in" | "married" => prop_assert!(later_on_change),
                other => prop_assert!(false, "unexpected entry reason {other}"),
            }
        }
    }

    #[test]
    fn a_short_visit_never_splits_an_episode((events, married) in history()) {
        let params = RuleParams::default();
        let eps = derive(&events, married, &params);
        for r in events.iter().filter(|e| e.kind == EventKind::SpouseReturned) {
            let window_end = r.date + TimeDelta::days(params.short_visit_days.into());
            let next_departure = events
                .iter()
                .filter(|e| e.kind == EventKind::SpouseDeparted && e.date >= r.date && e.date <= window_end)
                .map(|e| e.date)
                .min();
            // Whatever else happens in between (docs/status-rule.md): no exception for a
            // marriage change.
            let Some(d2) = next_departure else { continue };
            prop_assert!(
                !eps.iter().any(|e| e.end == Some(r.date) && e.exit_reason == Some("spouse_returned")),
                "return {} bridged by departure {d2} split an episode: {eps:?}", r.date
            );
        }
    }

    #[test]
    fn order_of_arrival_does_not_matter(
        (events, married) in history().prop_flat_map(|(ev, m)| (Just(ev).prop_shuffle(), Just(m))),
        seed in any::<u64>()
    ) {
        let mut reversed = events.clone();
        reversed.reverse();
        let mut rotated = events.clone();
        if !rotated.is_empty() {
            let k = (seed as usize) % rotated.len();
            rotated.rotate_left(k);
        }
        let params = RuleParams::default();
        let a = derive(&events, married, &params);
        prop_assert_eq!(&a, &derive(&reversed, married, &params));
        prop_assert_eq!(&a, &derive(&rotated, married, &params));
    }
}
