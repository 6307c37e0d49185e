//! The public API as another crate sees it: build, commit, inspect, pack, unpack.

use ferry_datatypes::{
    Block, Committed, Darg, Distribution, Layout, Level, Order, PackError, Type,
};

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn halo_face_of_a_3d_array() {
    // The y = 0 face of a 4 x 5 x 6 array of doubles (C order): 4 runs of 6 doubles.
    let d = Type::named(8);
    let face = Type::subarray(&[4, 5, 6], &[4, 1, 6], &[0, 0, 0], Order::C, &d).unwrap();
    let c = Committed::new(&face);
    assert_eq!(
        c.layout().to_string(),
        "strided{start=0, block=48, levels=[(4,240)]}"
    );
    let src = bytes(4 * 5 * 6 * 8);
    let mut packed = vec![0u8; c.packed_size(1).unwrap()];
    assert_eq!(c.pack(&src, 0, 1, &mut packed), Ok(192));
    for plane in 0..4 {
        assert_eq!(
            &packed[plane * 48..plane * 48 + 48],
            &src[plane * 240..plane * 240 + 48]
        );
    }
    let mut back = vec![0u8; src.len()];
    c.unpack(&packed, &mut back, 0, 1).unwrap();
    for plane in 0..4 {
        assert_eq!(
            &back[plane * 240..plane * 240 + 48],
            &src[plane * 240..plane * 240 + 48]
        );
        assert!(
            back[plane * 240 + 48..(plane + 1) * 240]
                .iter()
                .all(|&b| b == 0)
        );
    }
}

#[test]
fn raw_pointers_with_a_negative_lower_bound() {
    // Three ints walking backwards from the buffer pointer.
    let t = Type::vector(3, 1, -2, &Type::named(4)).unwrap();
    assert_eq!((t.lb(), t.extent(), t.true_lb()), (-16, 20, -16));
    let c = t.commit();
    let src = bytes(20);
    let mut out = [0u8; 12];
    // SAFETY: the type touches bytes -16 .. 4 around `src + 16`, all inside `src`, and
    // `out` holds the 12 packed bytes.
    let n = unsafe { c.pack_raw(src.as_ptr().add(16), 1, out.as_mut_ptr(), 0, 12) };
    assert_eq!(n, Ok(12));
    assert_eq!(out[..4], src[16..20]);
    let mut dst = [0u8; 20];
    // SAFETY: as above, for writes into `dst`.
    unsafe { c.unpack_raw(out.as_ptr(), 1, dst.as_mut_ptr().add(16), 0, 12) }.unwrap();
    assert_eq!(dst[8..12], src[8..12]);
    assert_eq!(dst[4..8], [0; 4]);
}

#[test]
fn position_semantics_through_pack_range() {
    let t = Type::darray(
        4,
        3,
        &[6, 6],
        &[Distribution::Cyclic, Distribution::Block],
        &[Darg::Value(2), Darg::Default],
        &[2, 2],
        Order::Fortran,
        &Type::named(2),
    )
    .unwrap();
    let c = t.commit();
    let src = bytes(t.extent() as usize * 2);
    let total = c.packed_size(2).unwrap();
    let mut whole = vec![0u8; total];
    c.pack(&src, 0, 2, &mut whole).unwrap();
    let mut position = 0;
    let mut pieces = Vec::new();
    while position < total {
        let mut seg = vec![0u8; 5.min(total - position)];
        position += c.pack_range(&src, 0, 2, position, &mut seg).unwrap();
        pieces.extend(seg);
    }
    assert_eq!(pieces, whole);
    assert!(matches!(
        c.pack_range(&src, 0, 2, total, &mut [0u8; 1]),
        Err(PackError::RangeOutOfBounds { .. })
    ));
}

#[test]
fn layouts_are_plain_data() {
    let l = Layout::from_parts(
        vec![Block { offset: 8, len: 4 }, Block { offset: 12, len: 4 }],
        vec![Level {
            count: 3,
            stride: 64,
        }],
    );
    assert!(l.is_strided());
    assert_eq!(l.blocks(), &[Block { offset: 8, len: 8 }]);
    assert_eq!(
        l.levels(),
        &[Level {
            count: 3,
            stride: 64
        }]
    );
    assert_eq!(l.packed_bytes(), 24);
    assert_eq!(l.footprint(), Some((8, 144)));
    let t = Type::struct_(&[3, 2], &[0, 16], &[Type::named(4), Type::named(8)]).unwrap();
    assert!(
        t.describe()
            .starts_with("struct(blocklens=[3, 2], displs=[0, 16])")
    );
    assert_eq!(t.to_string(), t.describe());
}
