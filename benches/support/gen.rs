//! Synthetic event lines for benchmarks: a deterministic mix of every event type.

/// A small deterministic generator (xorshift64*), so runs are comparable.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    /// Next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` JSON event lines for `customers` customers over two years (2023–2024, in the past
/// whatever day it is: later ones would be rejected by `engine.max_future_skew`), in time order:
/// 85% purchases, the rest profiles, tickets, complaints and scores.
#[allow(dead_code)]
pub fn lines(n: usize, customers: u64, seed: u64) -> Vec<String> {
    lines_part(n, customers, seed, 0, 1)
}

/// An engine holding about `customers` customers: three generated events each on
/// average, fed in chunks so the lines never all sit in memory.
#[allow(dead_code)]
pub fn engine_of(
    customers: u64,
    settings: std::sync::Arc<churnwatch::engine::settings::Settings>,
) -> churnwatch::engine::Engine {
    let mut engine = churnwatch::engine::Engine::new(settings);
    let mut out = Vec::new();
    let (total, chunk) = ((customers * 3) as usize, 300_000);
    let (mut done, mut seed) = (0, 11);
    while done < total {
        let n = chunk.min(total - done);
        for l in lines(n, customers, seed) {
            if let Ok(ev) = churnwatch::event::parse(l.as_bytes()) {
                engine.apply(ev, &mut out);
            }
            out.clear();
        }
        done += n;
        seed += 1;
    }
    engine
}

/// Part `part` of `parts` of one time-ordered history: the parts' times follow each other,
/// so a history generated in chunks reads like one stream.
#[allow(dead_code)]
pub fn lines_part(n: usize, customers: u64, seed: u64, part: u64, parts: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let whole: i64 = 2 * 365 * 86_400;
    let span: i64 = whole / parts.max(1) as i64;
    let start: i64 = 1_672_531_200 + span * part as i64; // from 2023-01-01T00:00:00Z
    let mut out = Vec::with_capacity(n);
    // Tickets get closed a little later, as they are in a shop that answers them.
    let mut open_tickets: std::collections::VecDeque<u64> = Default::default();
    for i in 0..n {
        let t = start + (i as i64 * span) / n as i64;
        let ts =
            jiff::Timestamp::from_second(t).map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        let ts = ts.unwrap_or_default();
        let mut c = rng.below(customers);
        let id = rng.next();
        let roll = rng.below(100);
        if (90..=92).contains(&roll) {
            open_tickets.push_back(c);
        } else if (93..=95).contains(&roll) {
            match open_tickets.pop_front() {
                Some(o) => c = o,
                None => c = rng.below(customers),
            }
        }
        let line = match roll {
            0..=84 => format!(
                r#"{{"event_id":"e{id:x}","type":"purchase","customer_id":"cust{c:010}","occurred_at":"{ts}","order_id":"o{id:x}","amount":"{}.{:02}","currency":"USD","categories":["books"]}}"#,
                5 + rng.below(200),
                rng.below(100)
            ),
            85..=89 => format!(
                r#"{{"event_id":"e{id:x}","type":"customer_profile","customer_id":"cust{c:010}","occurred_at":"{ts}","email":"cust{c}@example.com","name":"Customer {c}","locale":"en","timezone":"Europe/London","marketing_consent":true}}"#
            ),
            90..=92 => format!(
                r#"{{"event_id":"e{id:x}","type":"support_ticket_opened","customer_id":"cust{c:010}","occurred_at":"{ts}","ticket_id":"t{c}","severity":"normal"}}"#
            ),
            93..=95 => format!(
                r#"{{"event_id":"e{id:x}","type":"support_ticket_closed","customer_id":"cust{c:010}","occurred_at":"{ts}","ticket_id":"t{c}"}}"#
            ),
            96 => format!(
                r#"{{"event_id":"e{id:x}","type":"complaint","customer_id":"cust{c:010}","occurred_at":"{ts}","text":"late"}}"#
            ),
            _ => format!(
                r#"{{"event_id":"e{id:x}","type":"satisfaction","customer_id":"cust{c:010}","occurred_at":"{ts}","score":{}}}"#,
                1 + rng.below(5)
            ),
        };
        out.push(line);
    }
    out
}
