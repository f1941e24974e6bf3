use super::*;

fn work(video_seconds: f64, side: u32, steps: u32) -> Work {
    Work {
        video_seconds,
        pixels: f64::from(side) * f64::from(side),
        steps,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn the_first_sample_replaces_the_seed() {
    let (speed, samples) = next_speed(None, 20.0, 10.0).unwrap();
    assert!(close(speed, 10.0), "{speed}");
    assert_eq!(samples, 1);
}

#[test]
fn moving_average_converges_on_a_steady_speed() {
    let mut current = None;
    for _ in 0..30 {
        current = next_speed(current, 20.0, 8.0);
    }
    let (speed, samples) = current.unwrap();
    assert!((speed - 8.0).abs() < 0.01, "{speed}");
    assert_eq!(samples, 30);
}

#[test]
fn each_update_weighs_the_stored_speed_not_the_seed() {
    let (speed, samples) = next_speed(Some((10.0, 5)), 20.0, 12.0).unwrap();
    assert!(close(speed, 10.6), "{speed}");
    assert_eq!(samples, 6);
}

#[test]
fn absurd_samples_are_ignored() {
    for sample in [f64::NAN, f64::INFINITY, -1.0, 0.0, 1e-6, 1e6] {
        assert_eq!(next_speed(None, 20.0, sample), None, "{sample}");
    }
}

#[test]
fn a_settled_speed_ignores_a_tenfold_jump_but_a_new_one_does_not() {
    assert_eq!(next_speed(Some((2.0, 3)), 20.0, 25.0), None);
    assert_eq!(next_speed(Some((2.0, 3)), 20.0, 0.1), None);
    assert!(next_speed(Some((2.0, 3)), 20.0, 15.0).is_some());
    // A seed that is far off is corrected by the first jobs.
    assert!(next_speed(Some((20.0, 1)), 20.0, 0.5).is_some());
    assert!(next_speed(None, 20.0, 0.5).is_some());
}

#[test]
fn reference_job_costs_one_second_per_second_of_video() {
    assert!(close(work(7.0, 512, 25).reference_seconds(true), 7.0));
    assert!(close(work(7.0, 512, 25).reference_seconds(false), 7.0));
}

#[test]
fn cost_scales_with_output_pixels() {
    assert!(close(work(10.0, 1024, 25).reference_seconds(true), 40.0));
    assert!(close(work(10.0, 256, 25).reference_seconds(true), 2.5));
}

#[test]
fn cost_scales_with_steps_only_for_engines_that_honour_them() {
    assert!(close(work(10.0, 512, 50).reference_seconds(true), 20.0));
    assert!(close(work(10.0, 512, 5).reference_seconds(true), 2.0));
    assert!(close(work(10.0, 512, 50).reference_seconds(false), 10.0));
}

#[test]
fn work_is_read_from_a_jobs_stored_documents() {
    let params = r#"{"duration":7.56,"min_resolution":512,"inference_steps":50,"seed":1}"#;
    let output = r#"{"width":768,"height":512,"fps":25,"frames":189}"#;
    let work = Work::from_stored(params, output).unwrap();
    assert!(close(work.video_seconds, 7.56));
    assert!(close(work.pixels, 768.0 * 512.0));
    assert_eq!(work.steps, 50);
    assert!(Work::from_stored("{}", output).is_err());
    assert!(Work::from_stored(params, "[]").is_err());
}

#[test]
fn one_slot_runs_the_queue_one_after_another() {
    assert_eq!(start_after(1, &[], &[]), Some(0.0));
    assert_eq!(start_after(1, &[10.0], &[]), Some(10.0));
    assert_eq!(start_after(1, &[10.0], &[5.0, 7.0]), Some(22.0));
    assert_eq!(start_after(1, &[], &[5.0, 7.0]), Some(12.0));
}

#[test]
fn three_slots_take_the_queue_on_the_slot_that_frees_first() {
    // Free at 10, 2 and 0; four jobs of 4 s take the slots at 0, 2, 4 and 6.
    assert_eq!(start_after(3, &[10.0, 2.0], &[4.0; 4]), Some(8.0));
    assert_eq!(start_after(3, &[10.0, 2.0], &[]), Some(0.0));
    assert_eq!(start_after(3, &[10.0, 2.0, 30.0], &[]), Some(2.0));
    assert_eq!(start_after(3, &[], &[9.0, 1.0, 1.0, 1.0]), Some(1.0));
}

#[test]
fn more_running_jobs_than_slots_count_as_slots() {
    assert_eq!(start_after(1, &[10.0, 3.0], &[]), Some(3.0));
}

/// `start_after` as first written: one entry per slot, each job scanning them all.
fn start_after_by_scanning(slots: usize, busy_for: &[f64], ahead: &[f64]) -> Option<f64> {
    let mut free_at = vec![0.0; slots.max(busy_for.len())];
    for (slot, busy) in free_at.iter_mut().zip(busy_for) {
        *slot = f64::max(*busy, 0.0);
    }
    let earliest = |free_at: &[f64]| {
        free_at
            .iter()
            .copied()
            .enumerate()
            .min_by(|(_, a), (_, b)| a.total_cmp(b))
    };
    for cost in ahead {
        let (slot, at) = earliest(&free_at)?;
        free_at[slot] = at + cost.max(0.0);
    }
    earliest(&free_at).map(|(_, at)| at)
}

#[test]
fn slots_no_job_ahead_can_reach_change_nothing_and_cost_nothing() {
    // Remote workers report capacity: a huge count must not be simulated slot by slot (this
    // allocated one entry per slot and scanned them all for every job ahead).
    assert_eq!(start_after(usize::MAX, &[], &[]), Some(0.0));
    assert_eq!(start_after(usize::MAX, &[10.0, 2.0], &[4.0; 4]), Some(0.0));
    assert_eq!(
        start_after(u32::MAX as usize, &[10.0; 3], &[1.0; 1000]),
        Some(0.0)
    );
    assert_eq!(
        start_after(2, &[10.0; 3], &[1.0; 1000]),
        start_after_by_scanning(2, &[10.0; 3], &[1.0; 1000])
    );
    // The same answers as simulating every slot, whatever the slots, running jobs and queue.
    let busy = [7.5, 0.0, 3.0, 12.0, -1.0];
    let costs = [4.0, 0.5, 9.0, 1.0, 1.0, 6.0, 0.0, 2.5];
    for slots in 0..12 {
        for running in 0..=busy.len() {
            for queued in 0..=costs.len() {
                let (busy, ahead) = (&busy[..running], &costs[..queued]);
                assert_eq!(
                    start_after(slots, busy, ahead),
                    start_after_by_scanning(slots, busy, ahead),
                    "{slots} slots, busy {busy:?}, ahead {ahead:?}"
                );
            }
        }
    }
}

#[test]
fn without_slots_there_is_no_start() {
    assert_eq!(start_after(0, &[], &[]), None);
    assert_eq!(start_after(0, &[], &[5.0]), None);
}

#[test]
fn remaining_time_shrinks_to_a_floor_and_is_never_negative() {
    assert!(close(remaining(30.0, 10.0), 20.0));
    assert!(close(remaining(30.0, 29.5), MIN_REMAINING_S));
    assert!(close(remaining(30.0, 500.0), MIN_REMAINING_S));
    assert!(close(remaining(0.4, 10.0), 0.4));
    assert!(close(remaining(0.0, 10.0), 0.0));
    assert!(close(remaining(-3.0, 0.0), 0.0));
    let mut last = f64::INFINITY;
    for elapsed in 0..100 {
        let left = remaining(50.0, f64::from(elapsed));
        assert!(left <= last && left > 0.0);
        last = left;
    }
}

#[test]
fn progress_estimate_grows_with_elapsed_time_and_stops_below_one() {
    assert!(close(progress_estimate(100.0, 0.0), 0.0));
    assert!(close(progress_estimate(100.0, 25.0), 0.25));
    assert!(close(progress_estimate(100.0, 99.0), PROGRESS_CAP));
    assert!(close(progress_estimate(100.0, 1e9), PROGRESS_CAP));
    assert!(close(progress_estimate(0.0, 5.0), 0.0));
    assert!(close(progress_estimate(f64::NAN, 5.0), 0.0));
    assert!(close(progress_estimate(100.0, -5.0), 0.0));
    let mut last = 0.0;
    for elapsed in 0..200 {
        let progress = progress_estimate(100.0, f64::from(elapsed));
        assert!(progress >= last && progress < 1.0);
        last = progress;
    }
}

mod model {
    use super::*;
    use crate::engines::simulated::SimulatedEngine;

    async fn sqlite(dir: &std::path::Path) -> Arc<dyn Store> {
        crate::storage::connect(&format!("sqlite://{}/eta.db", dir.display()))
            .await
            .unwrap()
    }

    fn engines() -> Engines {
        let mut engines = Engines::default();
        engines.add(Arc::new(SimulatedEngine {
            duration: Duration::from_millis(1),
        }));
        engines
    }

    fn seeds() -> BTreeMap<String, f64> {
        BTreeMap::from([("simulated".to_owned(), 4.0)])
    }

    #[tokio::test]
    async fn estimates_start_from_the_seed_and_learn_from_each_job() {
        let dir = tempfile::tempdir().unwrap();
        let model = CostModel::load(sqlite(dir.path()).await, &engines(), &seeds())
            .await
            .unwrap();
        assert!(close(
            model.estimate("simulated", None, work(10.0, 512, 25)),
            40.0
        ));
        // Twice the pixels and twice the steps: four times the reference work.
        assert!(close(
            model.estimate("simulated", None, work(10.0, 724, 50)),
            4.0 * 10.0 * (724.0 * 724.0 / REFERENCE_PIXELS) * 2.0
        ));
        // 10 reference seconds in 20 s: a sample of 2 s/s.
        model
            .observe(
                "simulated",
                "",
                work(10.0, 512, 25),
                Duration::from_secs(20),
            )
            .await;
        // The first measurement replaces the seed.
        assert!(close(model.speed("simulated", None), 2.0));
        // A sample of 1e6 s/s is a measurement error.
        model
            .observe(
                "simulated",
                "",
                work(1.0, 512, 25),
                Duration::from_secs(1_000_000),
            )
            .await;
        assert!(close(model.speed("simulated", None), 2.0));
    }

    #[tokio::test]
    async fn measured_speeds_survive_a_new_model_on_the_same_database() {
        let dir = tempfile::tempdir().unwrap();
        let first = CostModel::load(sqlite(dir.path()).await, &engines(), &seeds())
            .await
            .unwrap();
        first
            .observe(
                "simulated",
                "gpu-a",
                work(5.0, 512, 25),
                Duration::from_secs(5),
            )
            .await;
        let second = CostModel::load(sqlite(dir.path()).await, &engines(), &seeds())
            .await
            .unwrap();
        assert!(close(second.speed("simulated", Some("gpu-a")), 1.0));
    }

    #[tokio::test]
    async fn an_unmeasured_instance_gets_the_median_of_the_measured_ones() {
        let dir = tempfile::tempdir().unwrap();
        let model = CostModel::load(sqlite(dir.path()).await, &engines(), &seeds())
            .await
            .unwrap();
        model
            .observe(
                "simulated",
                "a",
                work(10.0, 512, 25),
                Duration::from_secs(10),
            )
            .await;
        model
            .observe(
                "simulated",
                "b",
                work(10.0, 512, 25),
                Duration::from_secs(70),
            )
            .await;
        let (a, b) = (1.0, 7.0);
        assert!(close(model.speed("simulated", Some("a")), a));
        assert!(close(model.speed("simulated", Some("b")), b));
        assert!(close(model.speed("simulated", Some("c")), (a + b) / 2.0));
        assert!(close(model.speed("simulated", None), (a + b) / 2.0));
        // An odd instance does not drag the others' estimate: the median, not the mean.
        model
            .observe(
                "simulated",
                "odd",
                work(10.0, 512, 25),
                Duration::from_millis(50),
            )
            .await;
        assert!(close(model.speed("simulated", None), a));
        assert_eq!(model.instances_named("simulated", "o").len(), 1);
        // Engines nobody configured keep their default seed.
        assert!(close(model.speed("sonic", None), default_seed("sonic")));
    }
}
