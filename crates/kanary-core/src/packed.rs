//! Runs of numbers in model states as byte strings (little-endian).
//!
//! postcard copies a byte string in one go, where a sequence goes through serde one element at
//! a time; for a streaming model whose state is saved and restored whenever its service is
//! evicted and comes back, that per-element work was most of the cost. Use with
//! `#[serde(with = "crate::packed::vec")]` (a `Vec`), `packed::deque` (a `VecDeque`) or
//! `packed::opt_vec` (an `Option<Vec>`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// A number that packs into a fixed number of little-endian bytes.
pub trait Elem: Copy + 'static {
    const SIZE: usize;
    /// `xs` as bytes: borrowed where the memory already is little-endian bytes.
    fn bytes(xs: &[Self]) -> std::borrow::Cow<'_, [u8]>;
    fn read(chunk: &[u8]) -> Self;
}

impl Elem for u8 {
    const SIZE: usize = 1;
    fn bytes(xs: &[u8]) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(xs)
    }
    fn read(chunk: &[u8]) -> u8 {
        chunk[0]
    }
}

impl Elem for f64 {
    const SIZE: usize = 8;
    fn bytes(xs: &[f64]) -> std::borrow::Cow<'_, [u8]> {
        #[cfg(target_endian = "little")]
        {
            // SAFETY: any initialised memory may be read as bytes (u8 has no invalid values
            // and alignment 1); the slice covers exactly the `xs.len()` f64s of `xs`, which
            // outlive the borrow. On a little-endian target these are the LE encodings.
            std::borrow::Cow::Borrowed(unsafe {
                std::slice::from_raw_parts(xs.as_ptr().cast::<u8>(), std::mem::size_of_val(xs))
            })
        }
        #[cfg(not(target_endian = "little"))]
        {
            std::borrow::Cow::Owned(xs.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
    }
    fn read(chunk: &[u8]) -> f64 {
        f64::from_le_bytes(chunk.try_into().expect("8 bytes"))
    }
}

/// `a` then `b` as one byte string. A deque's halves are copied together through a per-thread
/// buffer, so the bytes do not depend on where the deque happens to wrap.
fn write<S: Serializer, E: Elem>(a: &[E], b: &[E], s: S) -> Result<S::Ok, S::Error> {
    if b.is_empty() {
        return s.serialize_bytes(&E::bytes(a));
    }
    thread_local! {
        static JOINED: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    }
    let mut joined = JOINED.take();
    joined.clear();
    joined.extend_from_slice(&E::bytes(a));
    joined.extend_from_slice(&E::bytes(b));
    let r = s.serialize_bytes(&joined);
    JOINED.set(joined);
    r
}

/// The numbers of one byte string.
struct Numbers<E>(PhantomData<E>);

impl<E: Elem> Numbers<E> {
    fn from<Er: de::Error>(v: &[u8]) -> Result<Vec<E>, Er> {
        if v.len() % E::SIZE != 0 {
            return Err(Er::invalid_length(v.len(), &Numbers::<E>(PhantomData)));
        }
        Ok(v.chunks_exact(E::SIZE).map(E::read).collect())
    }
}

impl<'de, E: Elem> Visitor<'de> for Numbers<E> {
    type Value = Vec<E>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a byte string of {}-byte numbers", E::SIZE)
    }

    fn visit_bytes<Er: de::Error>(self, v: &[u8]) -> Result<Vec<E>, Er> {
        Self::from(v)
    }

    fn visit_borrowed_bytes<Er: de::Error>(self, v: &'de [u8]) -> Result<Vec<E>, Er> {
        Self::from(v)
    }

    fn visit_byte_buf<Er: de::Error>(self, v: Vec<u8>) -> Result<Vec<E>, Er> {
        Self::from(&v)
    }

    /// Formats without byte strings (JSON) write them as sequences of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<E>, A::Error> {
        let mut bytes = Vec::new();
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        Self::from(&bytes)
    }
}

fn read<'de, D: Deserializer<'de>, E: Elem>(d: D) -> Result<Vec<E>, D::Error> {
    d.deserialize_bytes(Numbers(PhantomData))
}

/// `#[serde(with)]` for a `Vec` of numbers.
pub mod vec {
    use super::*;

    pub fn serialize<S: Serializer, E: Elem>(v: &[E], s: S) -> Result<S::Ok, S::Error> {
        write(v, &[], s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, E: Elem>(d: D) -> Result<Vec<E>, D::Error> {
        read(d)
    }
}

/// `#[serde(with)]` for a `VecDeque` of numbers.
pub mod deque {
    use super::*;

    pub fn serialize<S: Serializer, E: Elem>(v: &VecDeque<E>, s: S) -> Result<S::Ok, S::Error> {
        let (a, b) = v.as_slices();
        write(a, b, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, E: Elem>(d: D) -> Result<VecDeque<E>, D::Error> {
        read(d).map(VecDeque::from)
    }
}

/// `#[serde(with)]` for an `Option<Vec>` of numbers.
pub mod opt_vec {
    use super::*;

    struct Some_<'a, E>(&'a [E]);

    impl<E: Elem> Serialize for Some_<'_, E> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            write(self.0, &[], s)
        }
    }

    struct Owned<E>(Vec<E>);

    impl<'de, E: Elem> Deserialize<'de> for Owned<E> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            read(d).map(Owned)
        }
    }

    pub fn serialize<S: Serializer, E: Elem>(v: &Option<Vec<E>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&Some_(v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, E: Elem>(
        d: D,
    ) -> Result<Option<Vec<E>>, D::Error> {
        Ok(Option::<Owned<E>>::deserialize(d)?.map(|o| o.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        #[serde(with = "vec")]
        v: Vec<f64>,
        #[serde(with = "deque")]
        d: VecDeque<f64>,
        #[serde(with = "deque")]
        b: VecDeque<u8>,
        #[serde(with = "opt_vec")]
        o: Option<Vec<f64>>,
        #[serde(with = "opt_vec")]
        n: Option<Vec<f64>>,
        after: u32,
    }

    fn sample() -> S {
        // A deque that wraps around: its halves are written as one.
        let mut d = VecDeque::with_capacity(4);
        d.extend([1.0, 2.0, 3.0]);
        d.pop_front();
        d.pop_front();
        d.extend([f64::INFINITY, f64::NAN.copysign(-1.0)]);
        assert!(!d.as_slices().1.is_empty());
        S {
            v: vec![0.5, -1e300, 3.25],
            d,
            b: VecDeque::from(vec![0, 7, 255]),
            o: Some(vec![1.5]),
            n: None,
            after: 77,
        }
    }

    fn same(a: &S, b: &S) -> bool {
        let bits = |v: &mut dyn Iterator<Item = &f64>| v.map(|x| x.to_bits()).collect::<Vec<_>>();
        bits(&mut a.v.iter()) == bits(&mut b.v.iter())
            && bits(&mut a.d.iter()) == bits(&mut b.d.iter())
            && a.b == b.b
            && a.o == b.o
            && a.n == b.n
            && a.after == b.after
    }

    #[test]
    fn numbers_come_back_bit_for_bit_through_postcard_and_json() {
        let s = sample();
        let bytes = postcard::to_stdvec(&s).unwrap();
        let back: S = postcard::from_bytes(&bytes).unwrap();
        assert!(same(&back, &s));
        // The bytes do not depend on where a deque wraps.
        assert!(back.d.as_slices().1.is_empty());
        assert_eq!(postcard::to_stdvec(&back).unwrap(), bytes);
        let json = serde_json::to_string(&S {
            d: VecDeque::new(),
            ..sample()
        })
        .unwrap();
        let back: S = serde_json::from_str(&json).unwrap();
        assert_eq!(back.v, s.v);
    }

    #[test]
    fn a_value_is_its_bytes_and_a_length() {
        let s = S {
            v: vec![1.0],
            d: VecDeque::new(),
            b: VecDeque::from(vec![9]),
            o: None,
            n: None,
            after: 1,
        };
        let bytes = postcard::to_stdvec(&s).unwrap();
        let mut want = vec![8];
        want.extend(1.0f64.to_le_bytes());
        want.extend([0, 1, 9, 0, 0, 1]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn a_length_that_is_not_whole_numbers_is_an_error() {
        // v: 3 bytes, not a number of 8-byte values.
        let bytes = [3, 1, 2, 3, 0, 0, 0, 0, 1];
        assert!(postcard::from_bytes::<S>(&bytes).is_err());
    }
}
