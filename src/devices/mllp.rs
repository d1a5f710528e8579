//! MLLP (Minimal Lower Layer Protocol) framing, kept free of I/O so the
//! listener can own sockets, timeouts and back-pressure while this module
//! owns only the byte-level rules, which are then testable byte by byte.
//!
//! A frame is `START`, the payload, then the two bytes of `END`. Senders on
//! hospital networks are often sloppy (restarted frames, stray bytes between
//! frames, oversized messages), so the decoder recovers from each of these
//! and reports it instead of failing the connection.

use std::collections::VecDeque;
use std::mem;

pub const START: u8 = 0x0B;
pub const END: [u8; 2] = [0x1C, 0x0D];

/// Wraps a payload in an MLLP frame. The payload is not inspected: HL7 text
/// never contains the marker bytes, and escaping them is not part of MLLP.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(START);
    out.extend_from_slice(payload);
    out.extend_from_slice(&END);
    out
}

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Frame(Vec<u8>),
    /// bytes outside any frame, dropped (count) — reported so the listener
    /// can log/count them
    Garbage(usize),
    /// a frame longer than the limit: dropped up to its end marker (its
    /// length so far)
    TooLong(usize),
}

/// Incremental decoder for a byte stream: push what arrived, take what is
/// complete.
///
/// Bytes are consumed as soon as they are pushed, so memory is bounded by the
/// frame being assembled (at most `max_frame`) plus the complete items not yet
/// taken, which can never exceed what the caller pushed.
#[derive(Debug)]
pub struct Decoder {
    max_frame: usize,
    /// Payload of the unfinished frame; emptied once it exceeds `max_frame`.
    buf: Vec<u8>,
    in_frame: bool,
    /// The unfinished frame went over the limit and is being skipped.
    overflow: bool,
    /// Payload bytes of the unfinished frame, counted even when not kept.
    len: usize,
    /// The last byte was 0x1C: it is the end marker only if 0x0D follows,
    /// which may arrive in a later push, so it is held back until then.
    pending_fs: bool,
    /// Consecutive bytes seen outside any frame, not yet reported.
    garbage: usize,
    ready: VecDeque<Decoded>,
}

impl Decoder {
    /// `max_frame` caps the payload length; it exists so a peer that never
    /// sends an end marker cannot make the server buffer without limit.
    pub fn new(max_frame: usize) -> Decoder {
        Decoder {
            max_frame,
            buf: Vec::new(),
            in_frame: false,
            overflow: false,
            len: 0,
            pending_fs: false,
            garbage: 0,
            ready: VecDeque::new(),
        }
    }

    /// Garbage is reported at the end of each push (or when a frame starts)
    /// rather than held until a START that may never come, so a peer talking
    /// the wrong protocol shows up in the logs immediately.
    pub fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push_byte(b);
        }
        self.flush_garbage();
    }

    fn push_byte(&mut self, b: u8) {
        if !self.in_frame {
            if b == START {
                self.flush_garbage();
                self.start_frame();
            } else {
                self.garbage = self.garbage.saturating_add(1);
            }
            return;
        }
        if mem::take(&mut self.pending_fs) {
            if b == END[1] {
                self.finish_frame();
                return;
            }
            // A lone 0x1C is payload.
            self.append(END[0]);
        }
        match b {
            START => {
                self.abandon_frame();
                self.start_frame();
            }
            _ if b == END[0] => self.pending_fs = true,
            _ => self.append(b),
        }
    }

    fn flush_garbage(&mut self) {
        let count = mem::take(&mut self.garbage);
        if count > 0 {
            self.ready.push_back(Decoded::Garbage(count));
        }
    }

    fn start_frame(&mut self) {
        self.in_frame = true;
        self.overflow = false;
        self.len = 0;
        self.pending_fs = false;
        self.buf.clear();
    }

    fn append(&mut self, b: u8) {
        self.len = self.len.saturating_add(1);
        if self.overflow {
            return;
        }
        if self.buf.len() < self.max_frame {
            self.buf.push(b);
        } else {
            // Release the memory now; the rest of the frame is only counted.
            self.overflow = true;
            self.buf = Vec::new();
        }
    }

    fn finish_frame(&mut self) {
        self.in_frame = false;
        let item = if self.overflow {
            Decoded::TooLong(self.len)
        } else {
            Decoded::Frame(mem::take(&mut self.buf))
        };
        self.ready.push_back(item);
    }

    /// An unfinished frame is dropped as Garbage (its START and payload), or
    /// as TooLong if it was already over the limit, since the size is then
    /// the more useful thing to tell the operator.
    fn abandon_frame(&mut self) {
        if self.pending_fs {
            self.pending_fs = false;
            self.append(END[0]);
        }
        self.in_frame = false;
        let item = if self.overflow {
            Decoded::TooLong(self.len)
        } else {
            Decoded::Garbage(self.len.saturating_add(1))
        };
        self.buf = Vec::new();
        self.ready.push_back(item);
    }

    /// The next complete item, if any. Bytes before a START are Garbage. A
    /// START inside an unfinished frame (a sender that restarted without
    /// ending) ends the old frame as Garbage and starts a new one. The end
    /// marker is the PAIR 0x1C 0x0D (a lone 0x1C or 0x0D inside the payload
    /// is payload; 0x0D is the HL7 segment separator). Frames over max_frame
    /// are dropped (reported TooLong once the end arrives) without buffering
    /// beyond max_frame + a little.
    pub fn next_item(&mut self) -> Option<Decoded> {
        self.ready.pop_front()
    }

    /// Bytes buffered of an unfinished frame (0 while an oversized frame is
    /// being skipped, since nothing of it is kept).
    pub fn pending(&self) -> usize {
        if self.in_frame {
            self.buf.len() + usize::from(self.pending_fs)
        } else {
            0
        }
    }

    /// Call when the peer closed the connection: an unfinished frame can no
    /// longer complete, so it is queued as Garbage (or TooLong) for
    /// `next_item` to report instead of vanishing silently.
    pub fn finish(&mut self) {
        if self.in_frame {
            self.abandon_frame();
        }
        self.flush_garbage();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"MSH|^~\\&|A\rPID|1\r";

    fn drain(d: &mut Decoder) -> Vec<Decoded> {
        std::iter::from_fn(|| d.next_item()).collect()
    }

    fn decode(max: usize, bytes: &[u8]) -> Vec<Decoded> {
        let mut d = Decoder::new(max);
        d.push(bytes);
        drain(&mut d)
    }

    #[test]
    fn frame_wraps_payload() {
        assert_eq!(frame(b"ab"), vec![0x0B, b'a', b'b', 0x1C, 0x0D]);
        assert_eq!(frame(b""), vec![0x0B, 0x1C, 0x0D]);
    }

    #[test]
    fn one_frame() {
        let mut d = Decoder::new(1024);
        d.push(&frame(MSG));
        assert_eq!(d.next_item(), Some(Decoded::Frame(MSG.to_vec())));
        assert_eq!(d.next_item(), None);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn two_frames_in_one_push() {
        let mut bytes = frame(MSG);
        bytes.extend(frame(b"second"));
        assert_eq!(
            decode(1024, &bytes),
            vec![
                Decoded::Frame(MSG.to_vec()),
                Decoded::Frame(b"second".to_vec())
            ]
        );
    }

    #[test]
    fn frame_split_at_every_position() {
        let mut bytes = frame(MSG);
        bytes.extend(frame(b"x\x1c"));
        for split in 0..=bytes.len() {
            let (a, b) = bytes.split_at(split);
            let mut d = Decoder::new(1024);
            d.push(a);
            let mut items = drain(&mut d);
            d.push(b);
            items.extend(drain(&mut d));
            assert_eq!(
                items,
                vec![
                    Decoded::Frame(MSG.to_vec()),
                    Decoded::Frame(b"x\x1c".to_vec())
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn byte_by_byte() {
        let bytes = frame(MSG);
        let mut d = Decoder::new(1024);
        let mut items = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            d.push(&[*b]);
            // START is not buffered; the held-back 0x1C is; a finished frame is not.
            let expected = if i + 1 == bytes.len() { 0 } else { i };
            assert_eq!(d.pending(), expected, "after byte {i}");
            items.extend(drain(&mut d));
        }
        assert_eq!(items, vec![Decoded::Frame(MSG.to_vec())]);
    }

    #[test]
    fn garbage_before_start() {
        let mut bytes = b"junk\r\n".to_vec();
        bytes.extend(frame(MSG));
        assert_eq!(
            decode(1024, &bytes),
            vec![Decoded::Garbage(6), Decoded::Frame(MSG.to_vec())]
        );
    }

    #[test]
    fn garbage_without_start_is_reported_per_push() {
        let mut d = Decoder::new(16);
        d.push(b"abc");
        assert_eq!(drain(&mut d), vec![Decoded::Garbage(3)]);
        d.push(b"\x1c\x0d");
        assert_eq!(drain(&mut d), vec![Decoded::Garbage(2)]);
        d.push(b"");
        assert_eq!(drain(&mut d), vec![]);
    }

    #[test]
    fn lone_markers_are_payload() {
        // Everything up to the first 0x1C 0x0D pair is the payload, even a
        // 0x1C directly before it.
        assert_eq!(
            decode(1024, b"\x0ba\x1cb\rc\x1c\x1c\x0d\x0d"),
            vec![
                Decoded::Frame(b"a\x1cb\rc\x1c".to_vec()),
                Decoded::Garbage(1)
            ]
        );
        assert_eq!(
            decode(1024, &frame(b"\r\r\x1c\x1c")),
            vec![Decoded::Frame(b"\r\r\x1c\x1c".to_vec())]
        );
    }

    #[test]
    fn restarted_frame() {
        let mut bytes = vec![START];
        bytes.extend_from_slice(b"partial");
        bytes.extend(frame(MSG));
        assert_eq!(
            decode(1024, &bytes),
            vec![Decoded::Garbage(8), Decoded::Frame(MSG.to_vec())]
        );
        // A held-back 0x1C belongs to the abandoned frame.
        assert_eq!(
            decode(1024, b"\x0bab\x1c\x0bc\x1c\x0d"),
            vec![Decoded::Garbage(4), Decoded::Frame(b"c".to_vec())]
        );
    }

    #[test]
    fn oversized_frame_then_good_one() {
        let big = vec![b'x'; 100];
        let mut bytes = frame(&big);
        bytes.extend(frame(MSG));
        let mut d = Decoder::new(50);
        for chunk in bytes.chunks(7) {
            d.push(chunk);
            assert!(d.pending() <= 51);
            assert!(d.buf.capacity() <= 64);
        }
        assert_eq!(
            drain(&mut d),
            vec![Decoded::TooLong(100), Decoded::Frame(MSG.to_vec())]
        );
    }

    #[test]
    fn frame_exactly_at_limit() {
        assert_eq!(
            decode(3, &frame(b"abc")),
            vec![Decoded::Frame(b"abc".to_vec())]
        );
        assert_eq!(decode(3, &frame(b"abcd")), vec![Decoded::TooLong(4)]);
        assert_eq!(decode(0, &frame(b"a")), vec![Decoded::TooLong(1)]);
    }

    #[test]
    fn oversized_frame_restarted() {
        let mut bytes = vec![START];
        bytes.extend(vec![b'x'; 20]);
        bytes.extend(frame(b"ok"));
        assert_eq!(
            decode(10, &bytes),
            vec![Decoded::TooLong(20), Decoded::Frame(b"ok".to_vec())]
        );
    }

    #[test]
    fn empty_frame() {
        assert_eq!(
            decode(10, &[START, 0x1C, 0x0D]),
            vec![Decoded::Frame(vec![])]
        );
        assert_eq!(
            decode(0, &[START, 0x1C, 0x0D]),
            vec![Decoded::Frame(vec![])]
        );
    }

    #[test]
    fn finish_reports_unfinished_frame() {
        let mut d = Decoder::new(100);
        d.push(b"\x0babc\x1c");
        assert_eq!(d.pending(), 4);
        assert_eq!(d.next_item(), None);
        d.finish();
        assert_eq!(drain(&mut d), vec![Decoded::Garbage(5)]);
        assert_eq!(d.pending(), 0);
        d.finish();
        assert_eq!(d.next_item(), None);
        d.push(&frame(b"z"));
        assert_eq!(drain(&mut d), vec![Decoded::Frame(b"z".to_vec())]);
    }

    #[test]
    fn random_streams_do_not_panic() {
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = [START, 0x1C, 0x0D, b'a', b'|'];
        for _ in 0..300 {
            let mut d = Decoder::new(8);
            let mut total = 0;
            for _ in 0..20 {
                let len = usize::try_from(next() % 16).unwrap_or(0);
                let chunk: Vec<u8> = (0..len)
                    .map(|_| {
                        let i = usize::try_from(next() % 5).unwrap_or(0);
                        alphabet.get(i).copied().unwrap_or(0)
                    })
                    .collect();
                d.push(&chunk);
                assert!(d.pending() <= 9);
                while let Some(item) = d.next_item() {
                    if let Decoded::Frame(f) = item {
                        assert!(f.len() <= 8);
                        total += 1;
                    }
                }
            }
            d.finish();
            let _ = (drain(&mut d), total);
        }
    }
}
