//! Behaviour of the impairment model on a virtual clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use viska_netem::{
    DeliveryOrder, Impairment, ImpairmentConfig, JitterDistribution, LossModel, RateLimit,
};

/// A test packet: its sequence number and a payload size.
type Packet = (u64, Vec<u8>);

/// One delivery observed by [`run`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Delivery {
    sequence: u64,
    submitted_at: Instant,
    delivered_at: Instant,
}

/// Submits `count` packets of `size` bytes, one every `spacing`, and delivers each one at
/// exactly its deadline by stepping the virtual clock from event to event.
fn run(
    link: &mut Impairment<Packet>,
    start: Instant,
    count: u64,
    spacing: Duration,
    size: usize,
) -> Vec<Delivery> {
    let mut submit_times = Vec::new();
    let mut deliveries = Vec::new();
    let mut drain_until =
        |link: &mut Impairment<Packet>, until: Instant, submit_times: &[Instant]| {
            while let Some(deadline) = link.next_deadline().filter(|due| *due <= until) {
                while let Some((sequence, _)) = link.poll_deliver(deadline) {
                    let index = usize::try_from(sequence).expect("small");
                    deliveries.push(Delivery {
                        sequence,
                        submitted_at: submit_times[index],
                        delivered_at: deadline,
                    });
                }
            }
        };
    for sequence in 0..count {
        let now = start + spacing * u32::try_from(sequence).expect("small");
        drain_until(link, now, &submit_times);
        submit_times.push(now);
        link.submit(now, (sequence, vec![0; size]));
        // Deliver what is due at the submission instant itself.
        drain_until(link, now, &submit_times);
    }
    drain_until(link, start + Duration::from_secs(1_000_000), &submit_times);
    assert_eq!(link.queued(), 0);
    deliveries
}

fn sequences(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.sequence).collect()
}

fn link(config: ImpairmentConfig) -> Impairment<Packet> {
    Impairment::new(config).expect("valid configuration")
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn no_impairment_is_identity() {
    let mut identity = link(ImpairmentConfig::default());
    let start = Instant::now();
    for sequence in 0..10_000u64 {
        let now = start + MS * u32::try_from(sequence / 3).expect("small");
        identity.submit(
            now,
            (sequence, vec![u8::try_from(sequence % 251).expect("small")]),
        );
        assert_eq!(identity.next_deadline(), Some(now));
        let out = identity.poll_deliver(now).expect("delivered at once");
        assert_eq!(out.0, sequence);
        assert_eq!(out.1, vec![u8::try_from(sequence % 251).expect("small")]);
        assert_eq!(identity.poll_deliver(now), None);
        assert_eq!(identity.next_deadline(), None);
    }
    // Several packets submitted at one instant come out in order.
    let later = start + Duration::from_secs(10);
    for sequence in 0..100u64 {
        identity.submit(later, (sequence, Vec::new()));
    }
    let burst: Vec<u64> = std::iter::from_fn(|| identity.poll_deliver(later))
        .map(|p| p.0)
        .collect();
    assert_eq!(burst, (0..100).collect::<Vec<_>>());
    let stats = identity.stats();
    assert_eq!(stats.submitted, 10_100);
    assert_eq!(stats.delivered, 10_100);
    assert_eq!(
        (
            stats.dropped,
            stats.dropped_queue_full,
            stats.duplicated,
            stats.reordered
        ),
        (0, 0, 0, 0)
    );
}

#[test]
fn random_loss_rate_matches_probability() {
    for p in [0.01, 0.1, 0.3] {
        let mut lossy = link(ImpairmentConfig {
            loss: LossModel::Random { p },
            seed: 11,
            ..ImpairmentConfig::default()
        });
        let delivered = run(&mut lossy, Instant::now(), 100_000, MS, 1);
        let measured = 1.0 - delivered.len() as f64 / 100_000.0;
        eprintln!("random loss p = {p}: measured {measured:.4}");
        // Binomial standard deviation is at most 0.0015 here; allow about 4 of them.
        assert!((measured - p).abs() < 0.006, "p = {p}, measured {measured}");
        let stats = lossy.stats();
        assert_eq!(stats.dropped + stats.delivered, 100_000);
    }
}

/// Lengths of the runs of consecutive missing sequence numbers.
fn loss_bursts(delivered: &[u64], count: u64) -> Vec<u64> {
    let mut received = vec![false; usize::try_from(count).expect("small")];
    for &sequence in delivered {
        received[usize::try_from(sequence).expect("small")] = true;
    }
    let mut bursts = Vec::new();
    let mut current = 0;
    for got in received {
        if got {
            if current > 0 {
                bursts.push(current);
            }
            current = 0;
        } else {
            current += 1;
        }
    }
    if current > 0 {
        bursts.push(current);
    }
    bursts
}

#[test]
fn gilbert_elliott_mean_loss_and_burst_length_match_configuration() {
    for (loss_percent, mean_burst) in [(10.0, 4.0), (3.0, 2.0), (20.0, 8.0)] {
        let mut bursty = link(ImpairmentConfig {
            loss: LossModel::gilbert_elliott(loss_percent, mean_burst).expect("valid"),
            seed: 5,
            ..ImpairmentConfig::default()
        });
        let delivered = sequences(&run(&mut bursty, Instant::now(), 100_000, MS, 1));
        let measured_loss = 1.0 - delivered.len() as f64 / 100_000.0;
        let bursts = loss_bursts(&delivered, 100_000);
        let measured_burst = bursts.iter().sum::<u64>() as f64 / bursts.len() as f64;
        eprintln!(
            "Gilbert-Elliott {loss_percent} % / burst {mean_burst}: measured loss {:.2} %, \
             mean burst {measured_burst:.3} over {} bursts",
            measured_loss * 100.0,
            bursts.len()
        );
        assert!(
            (measured_loss - loss_percent / 100.0).abs() < 0.015,
            "loss {loss_percent} %: measured {measured_loss}"
        );
        assert!(
            (measured_burst - mean_burst).abs() < mean_burst * 0.1,
            "burst {mean_burst}: measured {measured_burst} over {} bursts",
            bursts.len()
        );
    }
    // Independent loss at the same rate has far shorter bursts: 1 / (1 - p).
    let mut random = link(ImpairmentConfig {
        loss: LossModel::Random { p: 0.1 },
        seed: 5,
        ..ImpairmentConfig::default()
    });
    let delivered = sequences(&run(&mut random, Instant::now(), 100_000, MS, 1));
    let bursts = loss_bursts(&delivered, 100_000);
    let measured_burst = bursts.iter().sum::<u64>() as f64 / bursts.len() as f64;
    assert!(
        (measured_burst - 1.0 / 0.9).abs() < 0.05,
        "{measured_burst}"
    );
}

#[test]
fn general_gilbert_elliott_loses_in_both_states() {
    // Stationary bad share 0.05 / (0.05 + 0.25) = 1/6; loss = 1/6 * 0.5 + 5/6 * 0.02.
    let model = LossModel::GilbertElliott {
        p_good_to_bad: 0.05,
        p_bad_to_good: 0.25,
        loss_in_good: 0.02,
        loss_in_bad: 0.5,
    };
    let expected = model.mean_loss();
    assert!((expected - (0.5 / 6.0 + 0.02 * 5.0 / 6.0)).abs() < 1e-12);
    let mut lossy = link(ImpairmentConfig {
        loss: model,
        seed: 3,
        ..ImpairmentConfig::default()
    });
    let delivered = run(&mut lossy, Instant::now(), 100_000, MS, 1);
    let measured = 1.0 - delivered.len() as f64 / 100_000.0;
    assert!(
        (measured - expected).abs() < 0.01,
        "{measured} vs {expected}"
    );
}

fn one_way_delays(deliveries: &[Delivery]) -> Vec<Duration> {
    deliveries
        .iter()
        .map(|d| d.delivered_at - d.submitted_at)
        .collect()
}

fn mean_and_deviation_ms(delays: &[Duration]) -> (f64, f64) {
    let ms: Vec<f64> = delays.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let variance = ms.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / ms.len() as f64;
    (mean, variance.sqrt())
}

#[test]
fn delay_and_jitter_stay_within_bounds() {
    let delay = 50 * MS;
    let jitter = 20 * MS;
    for (distribution, expected_deviation_ms) in [
        (JitterDistribution::Uniform, 20.0 / 12f64.sqrt()),
        (JitterDistribution::Bell, 20.0 / 48f64.sqrt()),
    ] {
        for order in [DeliveryOrder::ByDeadline, DeliveryOrder::Fifo] {
            let mut jittery = link(ImpairmentConfig {
                delay,
                jitter,
                jitter_distribution: distribution,
                order,
                seed: 9,
                ..ImpairmentConfig::default()
            });
            let delays = one_way_delays(&run(&mut jittery, Instant::now(), 20_000, 20 * MS, 100));
            assert_eq!(delays.len(), 20_000);
            let min = delays.iter().min().copied().expect("non-empty");
            let max = delays.iter().max().copied().expect("non-empty");
            assert!(min >= delay, "{distribution:?} {order:?}: {min:?}");
            assert!(max <= delay + jitter, "{distribution:?} {order:?}: {max:?}");
            if order == DeliveryOrder::ByDeadline {
                // Packets 20 ms apart with at most 20 ms jitter: each delay is its own sample.
                let (mean, deviation) = mean_and_deviation_ms(&delays);
                eprintln!(
                    "delay 50 ms + {distribution:?} jitter 20 ms: one-way {min:?}..={max:?}, \
                     mean {mean:.2} ms, deviation {deviation:.2} ms"
                );
                assert!((mean - 60.0).abs() < 0.3, "{distribution:?}: mean {mean}");
                assert!(
                    (deviation - expected_deviation_ms).abs() < 0.3,
                    "{distribution:?}: deviation {deviation}, expected {expected_deviation_ms}"
                );
            }
        }
    }
}

#[test]
fn fifo_jitter_never_reorders_but_deadline_order_does() {
    let base = ImpairmentConfig {
        delay: 30 * MS,
        jitter: 40 * MS,
        seed: 21,
        ..ImpairmentConfig::default()
    };
    let mut fifo = link(ImpairmentConfig {
        order: DeliveryOrder::Fifo,
        ..base.clone()
    });
    let in_order = sequences(&run(&mut fifo, Instant::now(), 10_000, 10 * MS, 100));
    assert_eq!(in_order, (0..10_000).collect::<Vec<_>>());
    assert_eq!(fifo.stats().reordered, 0);

    let mut by_deadline = link(ImpairmentConfig {
        order: DeliveryOrder::ByDeadline,
        ..base
    });
    let shuffled = sequences(&run(&mut by_deadline, Instant::now(), 10_000, 10 * MS, 100));
    assert_eq!(shuffled.len(), 10_000);
    let late = count_late(&shuffled);
    assert_eq!(by_deadline.stats().reordered, late);
    // Jitter of 40 ms over 10 ms spacing reorders a large share of packets.
    assert!(late > 2_000, "{late}");
}

/// Packets that arrive after a packet sent later than them.
fn count_late(order: &[u64]) -> u64 {
    let mut highest = None;
    let mut late = 0;
    for &sequence in order {
        match highest {
            Some(h) if sequence < h => late += 1,
            Some(h) if sequence == h => {}
            _ => highest = Some(sequence),
        }
    }
    late
}

#[test]
fn reorder_happens_at_configured_rate() {
    for reorder_pct in [1.0, 5.0, 20.0] {
        let mut reordering = link(ImpairmentConfig {
            delay: 20 * MS,
            reorder_pct,
            reorder_delay: 25 * MS,
            seed: 77,
            ..ImpairmentConfig::default()
        });
        let deliveries = run(&mut reordering, Instant::now(), 50_000, 10 * MS, 100);
        let order = sequences(&deliveries);
        assert_eq!(order.len(), 50_000);
        let late = count_late(&order);
        assert_eq!(reordering.stats().reordered, late);
        let measured = late as f64 / 50_000.0 * 100.0;
        eprintln!("reorder {reorder_pct} %: measured {measured:.2} %");
        assert!(
            (measured - reorder_pct).abs() < 0.1 * reorder_pct + 0.2,
            "{reorder_pct} %: measured {measured} %"
        );
        // Held-back packets arrive exactly reorder_delay late; the others on time.
        for delay in one_way_delays(&deliveries) {
            assert!(delay == 20 * MS || delay == 45 * MS, "{delay:?}");
        }
    }
}

#[test]
fn duplication_delivers_extra_copies() {
    let mut duplicating = link(ImpairmentConfig {
        duplicate_pct: 10.0,
        delay: 5 * MS,
        seed: 8,
        ..ImpairmentConfig::default()
    });
    let order = sequences(&run(&mut duplicating, Instant::now(), 50_000, MS, 10));
    let mut copies: HashMap<u64, u32> = HashMap::new();
    for sequence in &order {
        *copies.entry(*sequence).or_default() += 1;
    }
    assert_eq!(copies.len(), 50_000);
    assert!(copies.values().all(|&n| n == 1 || n == 2));
    let doubled = copies.values().filter(|&&n| n == 2).count() as f64 / 50_000.0;
    assert!((doubled - 0.1).abs() < 0.01, "{doubled}");
    let stats = duplicating.stats();
    assert_eq!(stats.delivered, u64::try_from(order.len()).expect("small"));
    assert_eq!(stats.delivered, stats.submitted + stats.duplicated);
    // A copy right behind its original is not a reordering.
    assert_eq!(stats.reordered, 0);
}

#[test]
fn same_seed_same_outcome_other_seed_other_outcome() {
    let config = ImpairmentConfig {
        loss: LossModel::gilbert_elliott(8.0, 3.0).expect("valid"),
        delay: 40 * MS,
        jitter: 30 * MS,
        order: DeliveryOrder::ByDeadline,
        reorder_pct: 2.0,
        duplicate_pct: 1.0,
        seed: 1234,
        ..ImpairmentConfig::default()
    };
    let start = Instant::now();
    let first = run(&mut link(config.clone()), start, 5_000, 10 * MS, 100);
    let second = run(&mut link(config.clone()), start, 5_000, 10 * MS, 100);
    assert_eq!(first, second);
    let other = run(
        &mut link(ImpairmentConfig {
            seed: 1235,
            ..config
        }),
        start,
        5_000,
        10 * MS,
        100,
    );
    assert_ne!(first, other);
}

#[test]
fn loss_pattern_does_not_depend_on_other_settings() {
    let lossy = ImpairmentConfig {
        loss: LossModel::Random { p: 0.2 },
        seed: 99,
        ..ImpairmentConfig::default()
    };
    let start = Instant::now();
    let mut plain = sequences(&run(&mut link(lossy.clone()), start, 5_000, 10 * MS, 10));
    let mut jittered = sequences(&run(
        &mut link(ImpairmentConfig {
            jitter: 50 * MS,
            order: DeliveryOrder::ByDeadline,
            ..lossy
        }),
        start,
        5_000,
        10 * MS,
        10,
    ));
    assert_ne!(plain, jittered, "jitter should have reordered something");
    plain.sort_unstable();
    jittered.sort_unstable();
    assert_eq!(plain, jittered);
}

#[test]
fn full_queue_drops_and_counts() {
    let mut small = link(ImpairmentConfig {
        delay: 100 * MS,
        queue_limit: 10,
        ..ImpairmentConfig::default()
    });
    let start = Instant::now();
    for sequence in 0..50 {
        small.submit(start, (sequence, vec![0; 10]));
    }
    assert_eq!(small.queued(), 10);
    assert_eq!(small.stats().dropped_queue_full, 40);
    assert_eq!(small.poll_deliver(start + 99 * MS), None);
    let delivered: Vec<u64> = std::iter::from_fn(|| small.poll_deliver(start + 100 * MS))
        .map(|p| p.0)
        .collect();
    assert_eq!(delivered, (0..10).collect::<Vec<_>>());
    // Space again: new packets are accepted.
    small.submit(start + 100 * MS, (50, Vec::new()));
    assert_eq!(small.queued(), 1);
}

#[test]
fn rate_limit_serialises_packets() {
    // 1250 bytes at 1 Mbit/s take 10 ms on the wire.
    let mut bottleneck = link(ImpairmentConfig {
        rate: Some(RateLimit {
            bits_per_second: 1_000_000,
        }),
        delay: 5 * MS,
        ..ImpairmentConfig::default()
    });
    let start = Instant::now();
    for sequence in 0..10 {
        bottleneck.submit(start, (sequence, vec![0; 1250]));
    }
    for sequence in 0..10u32 {
        let due = bottleneck.next_deadline().expect("queued");
        assert_eq!(due, start + 10 * MS * (sequence + 1) + 5 * MS);
        assert_eq!(
            bottleneck.poll_deliver(due).map(|p| p.0),
            Some(u64::from(sequence))
        );
    }
    // After the link has been idle, a packet again takes just its own 10 ms.
    let later = start + Duration::from_secs(1);
    bottleneck.submit(later, (10, vec![0; 1250]));
    assert_eq!(bottleneck.next_deadline(), Some(later + 15 * MS));
}

#[test]
fn set_config_applies_to_new_packets_only() {
    let mut changing = link(ImpairmentConfig {
        delay: 50 * MS,
        ..ImpairmentConfig::default()
    });
    let start = Instant::now();
    changing.submit(start, (0, Vec::new()));
    assert!(
        changing
            .set_config(ImpairmentConfig {
                loss: LossModel::Random { p: 2.0 },
                ..ImpairmentConfig::default()
            })
            .is_err()
    );
    assert_eq!(changing.config().delay, 50 * MS);
    changing
        .set_config(ImpairmentConfig::default())
        .expect("valid");
    changing.submit(start + MS, (1, Vec::new()));
    // The queue stays FIFO across the change: packet 1 waits for packet 0.
    assert_eq!(changing.poll_deliver(start + 49 * MS), None);
    assert_eq!(changing.poll_deliver(start + 50 * MS).map(|p| p.0), Some(0));
    assert_eq!(changing.poll_deliver(start + 50 * MS).map(|p| p.0), Some(1));
    // Once it has drained, new packets see no delay at all.
    changing.submit(start + 60 * MS, (2, Vec::new()));
    assert_eq!(changing.poll_deliver(start + 60 * MS).map(|p| p.0), Some(2));
}

#[test]
fn invalid_configuration_is_refused() {
    let refused = Impairment::<Packet>::new(ImpairmentConfig {
        loss: LossModel::Random { p: -0.5 },
        ..ImpairmentConfig::default()
    });
    assert!(refused.is_err());
}

/// A random but valid configuration.
fn random_config(rng: &mut StdRng) -> ImpairmentConfig {
    let loss = match rng.random_range(0..3) {
        0 => LossModel::None,
        1 => LossModel::Random {
            p: rng.random::<f64>(),
        },
        _ => LossModel::GilbertElliott {
            p_good_to_bad: rng.random::<f64>(),
            p_bad_to_good: rng.random_range(0.01..=1.0),
            loss_in_good: rng.random::<f64>() * 0.1,
            loss_in_bad: rng.random::<f64>(),
        },
    };
    ImpairmentConfig {
        loss,
        delay: MS * rng.random_range(0..200),
        jitter: MS * rng.random_range(0..100),
        jitter_distribution: if rng.random() {
            JitterDistribution::Uniform
        } else {
            JitterDistribution::Bell
        },
        order: if rng.random() {
            DeliveryOrder::Fifo
        } else {
            DeliveryOrder::ByDeadline
        },
        reorder_pct: rng.random_range(0.0..30.0),
        reorder_delay: MS * rng.random_range(1..50),
        duplicate_pct: rng.random_range(0.0..30.0),
        rate: rng.random_bool(0.3).then(|| RateLimit {
            bits_per_second: rng.random_range(10_000..10_000_000),
        }),
        queue_limit: rng.random_range(1..200),
        seed: rng.random(),
    }
}

#[test]
fn random_configurations_and_clocks_keep_every_packet_accounted_for() {
    let mut rng = StdRng::seed_from_u64(2026);
    for _ in 0..300 {
        let config = random_config(&mut rng);
        let mut link = link(config.clone());
        let mut now = Instant::now() + Duration::from_secs(10);
        let mut sequence = 0u64;
        for _ in 0..400 {
            match rng.random_range(0..4) {
                0 | 1 => {
                    link.submit(now, (sequence, vec![0; rng.random_range(0..1500)]));
                    sequence += 1;
                }
                2 => {
                    if link.next_deadline().is_some_and(|due| due > now) {
                        assert_eq!(link.poll_deliver(now), None, "{config:?}");
                    }
                    while link.poll_deliver(now).is_some() {}
                    assert!(link.next_deadline().is_none_or(|due| due > now));
                }
                _ => {
                    // The clock mostly advances, sometimes stands still or steps back.
                    let step = MS * rng.random_range(0..50);
                    now = if rng.random_bool(0.1) {
                        now - step
                    } else {
                        now + step
                    };
                }
            }
            let stats = link.stats();
            let queued = u64::try_from(link.queued()).expect("small");
            assert!(queued <= u64::try_from(config.queue_limit).expect("small"));
            assert_eq!(
                stats.submitted + stats.duplicated,
                stats.dropped + stats.dropped_queue_full + stats.delivered + queued,
                "{config:?}"
            );
            assert!(stats.reordered <= stats.delivered);
        }
    }
}
