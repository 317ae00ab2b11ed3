//! The one writer of a scored event as JSON, in its two shapes: the anomaly record `detect`
//! and `demo` publish (docs/events.md) and the `eval --scores` line (docs/cli.md). Both keep
//! their documented key order.

use kanary_core::Scored;
use kanary_core::event::{Event, write_f64, write_json_object, write_json_str};

/// Which record to write.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// `{"ts","detected_at","service","model","score","threshold","features","contributions",
    /// "labels","label","partition","offset"}`
    Anomaly {
        detected_at: f64,
        partition: i32,
        offset: i64,
    },
    /// `{"ts","service","model","score","threshold","flagged","label"[,"anomaly"],
    /// "contributions"}` plus a newline.
    Score,
}

fn label(out: &mut String, ev: &Event) {
    out.push_str(match ev.label {
        Some(true) => ",\"label\":1",
        Some(false) => ",\"label\":0",
        None => ",\"label\":null",
    });
}

/// Appends the JSON of one scored event to `out`.
pub fn write_scored(out: &mut String, ev: &Event, model: &str, s: &Scored, shape: Shape) {
    out.push_str("{\"ts\":");
    write_f64(out, ev.ts);
    if let Shape::Anomaly { detected_at, .. } = shape {
        out.push_str(",\"detected_at\":");
        write_f64(out, (detected_at * 1e6).round() / 1e6);
    }
    out.push_str(",\"service\":");
    write_json_str(out, &ev.service);
    out.push_str(",\"model\":");
    write_json_str(out, model);
    out.push_str(",\"score\":");
    write_f64(out, s.score);
    out.push_str(",\"threshold\":");
    write_f64(out, s.threshold);
    match shape {
        Shape::Anomaly {
            partition, offset, ..
        } => {
            out.push_str(",\"features\":");
            write_json_object(out, &s.features, &s.values);
            out.push_str(",\"contributions\":");
            write_json_object(out, &s.features, &s.contributions);
            // The event's string fields: the entity's labels from the gateway (job,
            // instance, ...), the simulator's `anomaly`.
            out.push_str(",\"labels\":{");
            for (i, (k, v)) in ev.meta.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_str(out, k);
                out.push(':');
                write_json_str(out, v);
            }
            out.push('}');
            label(out, ev);
            out.push_str(",\"partition\":");
            out.push_str(&partition.to_string());
            out.push_str(",\"offset\":");
            out.push_str(&offset.to_string());
            out.push('}');
        }
        Shape::Score => {
            out.push_str(if s.flagged {
                ",\"flagged\":true"
            } else {
                ",\"flagged\":false"
            });
            label(out, ev);
            if let Some(a) = ev.meta("anomaly") {
                out.push_str(",\"anomaly\":");
                write_json_str(out, a);
            }
            out.push_str(",\"contributions\":");
            write_json_object(out, &s.features, &s.contributions);
            out.push_str("}\n");
        }
    }
}
