//! GPU tests of the zero-copy gather against a CPU reference: many row sizes, unaligned table
//! bases, i32 and i64 indices, duplicates, sorting, empty batches and out-of-range indices.
//! Each test prints `skipped: ...` and passes on machines without a GPU.

use ferry_gpu::{DeviceBuffer, Gpu, gpu_available};
use ferry_zerocopy::{
    CpuGather, GatherIndex, GatherOptions, GatherPipeline, Gatherer, HostTable, TableView,
    ZeroCopyError, stream_copy,
};

fn gpu_or_skip(test: &str) -> Option<Gpu> {
    match gpu_available() {
        Ok(()) => Some(Gpu::open(0).expect("device 0 opened a moment ago")),
        Err(why) => {
            println!("skipped: {test}: no GPU ({why})");
            None
        }
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn indices<I: GatherIndex + TryFrom<usize>>(rng: &mut Rng, n: usize, rows: usize) -> Vec<I> {
    (0..n)
        .map(|_| {
            I::try_from(rng.below(rows))
                .ok()
                .expect("index fits the type")
        })
        .collect()
}

fn reference<I: GatherIndex>(table: TableView<'_>, idx: &[I]) -> Vec<u8> {
    // A plain loop, independent of the crate's own CPU gather.
    let mut want = Vec::with_capacity(idx.len() * table.row_bytes());
    for &i in idx {
        want.extend_from_slice(table.row(i.to_i64() as usize));
    }
    want
}

fn check<I: GatherIndex + TryFrom<usize>>(
    gpu: &Gpu,
    table: &HostTable,
    offset: usize,
    row_bytes: usize,
    options: GatherOptions,
    seed: u64,
) {
    let rows = (table.len_bytes() - offset) / row_bytes;
    let view = table.view_at(offset, rows, row_bytes).unwrap();
    let mut rng = Rng(seed | 1);
    let n = 1075;
    let mut idx: Vec<I> = indices(&mut rng, n, rows);
    // Duplicates: repeat a few indices.
    for k in 0..20 {
        idx[k * 7] = idx[3];
    }
    let mut g = Gatherer::new(gpu, options).unwrap();
    let mut out: DeviceBuffer<u8> = g.stream().alloc_zeros(n * row_bytes).unwrap();
    g.gather(view, &idx, &mut out).unwrap_or_else(|e| {
        panic!("gather failed: row {row_bytes} offset {offset} seed {seed} {options:?}: {e}")
    });
    let got = out.clone_dtoh().unwrap();
    let want = reference(view, &idx);
    if got != want {
        let k = (0..n)
            .find(|&k| {
                got[k * row_bytes..(k + 1) * row_bytes] != want[k * row_bytes..(k + 1) * row_bytes]
            })
            .unwrap();
        panic!(
            "mismatch at row {k} (index {}): row_bytes {row_bytes} offset {offset} seed {seed} \
             {} {options:?} shape {:?}",
            idx[k].to_i64(),
            std::any::type_name::<I>(),
            g.shape(&view, &out)
        );
    }
}

const ROW_SIZES: [usize; 16] = [
    4, 8, 12, 16, 24, 64, 100, 128, 132, 200, 256, 384, 512, 1000, 1024, 4096,
];

#[test]
fn gather_matches_reference_for_many_row_sizes() {
    let Some(gpu) = gpu_or_skip("gather_matches_reference_for_many_row_sizes") else {
        return;
    };
    let mut table = HostTable::alloc(&gpu, 2048, 4096 + 64).unwrap();
    table.fill_pattern(7);
    let variants = [
        GatherOptions::default(),
        GatherOptions {
            align_lines: false,
            ..Default::default()
        },
        GatherOptions {
            sort: true,
            ..Default::default()
        },
        GatherOptions {
            unroll: 1,
            max_threads: Some(256),
            ..Default::default()
        },
    ];
    for (v, options) in variants.into_iter().enumerate() {
        for (s, &rb) in ROW_SIZES.iter().enumerate() {
            for offset in [0usize, 4, 8, 36] {
                if offset % 4 != 0 && rb % 4 == 0 {
                    continue;
                }
                let seed = (v * 1000 + s * 10) as u64 + offset as u64;
                check::<i32>(&gpu, &table, offset, rb, options, seed);
                check::<i64>(&gpu, &table, offset, rb, options, seed + 1);
            }
        }
    }
}

#[test]
fn gather_handles_byte_aligned_rows() {
    let Some(gpu) = gpu_or_skip("gather_handles_byte_aligned_rows") else {
        return;
    };
    let mut table = HostTable::alloc(&gpu, 512, 300).unwrap();
    table.fill_pattern(11);
    for rb in [1usize, 3, 6, 7, 130, 257] {
        for offset in [0usize, 1, 3] {
            check::<i32>(
                &gpu,
                &table,
                offset,
                rb,
                GatherOptions::default(),
                rb as u64,
            );
        }
    }
}

#[test]
fn registered_table_gathers_like_allocated() {
    let Some(gpu) = gpu_or_skip("registered_table_gathers_like_allocated") else {
        return;
    };
    let data: Vec<u32> = (0..1000u32 * 64).collect();
    let table = HostTable::register(&gpu, data, 64).unwrap();
    assert_eq!((table.rows(), table.row_bytes()), (1000, 256));
    check::<i64>(&gpu, &table, 0, 256, GatherOptions::default(), 5);
}

#[test]
fn empty_batch_is_a_no_op() {
    let Some(gpu) = gpu_or_skip("empty_batch_is_a_no_op") else {
        return;
    };
    let table = HostTable::alloc(&gpu, 16, 64).unwrap();
    let mut g = Gatherer::new(&gpu, GatherOptions::default()).unwrap();
    let mut out: DeviceBuffer<u8> = g.stream().alloc_zeros(0).unwrap();
    g.gather::<i32>(table.view(), &[], &mut out).unwrap();
    g.gather_device(
        table.view(),
        &g.stream().clone_htod::<i64>(&[]).unwrap(),
        &mut out,
    )
    .unwrap();
}

#[test]
fn out_of_range_index_is_an_error_naming_it() {
    let Some(gpu) = gpu_or_skip("out_of_range_index_is_an_error_naming_it") else {
        return;
    };
    let mut table = HostTable::alloc(&gpu, 100, 256).unwrap();
    table.fill_pattern(3);
    for sort in [false, true] {
        let mut g = Gatherer::new(
            &gpu,
            GatherOptions {
                sort,
                ..Default::default()
            },
        )
        .unwrap();
        let mut out: DeviceBuffer<u8> = g.stream().alloc_zeros(5 * 256).unwrap();
        let err = g
            .gather(table.view(), &[1i64, 99, 100, 7, -2], &mut out)
            .unwrap_err();
        // The smallest bad position in the batch, whatever order the gather ran in.
        let want_pos = 2;
        match err {
            ZeroCopyError::IndexOutOfRange {
                position,
                index,
                rows,
            } => {
                assert_eq!(rows, 100);
                assert_eq!(position, want_pos, "sort {sort}: {err}");
                assert_eq!(index, 100);
            }
            other => panic!("unexpected error: {other}"),
        }
        // The good rows around it were still gathered, and the next batch works.
        let idx = [5i32, 6];
        let mut out2: DeviceBuffer<u8> = g.stream().alloc_zeros(2 * 256).unwrap();
        g.gather(table.view(), &idx, &mut out2).unwrap();
        assert_eq!(out2.clone_dtoh().unwrap(), reference(table.view(), &idx));
    }
    let mut g = Gatherer::new(&gpu, GatherOptions::default()).unwrap();
    let idx = g.stream().clone_htod(&[0i32, 1, 1000]).unwrap();
    let mut out: DeviceBuffer<u8> = g.stream().alloc_zeros(3 * 256).unwrap();
    let err = g.gather_device(table.view(), &idx, &mut out).unwrap_err();
    assert!(
        err.to_string().contains("index 1000 at position 2"),
        "{err}"
    );
}

#[test]
fn cpu_gather_and_stream_copy_match() {
    let Some(gpu) = gpu_or_skip("cpu_gather_and_stream_copy_match") else {
        return;
    };
    let mut table = HostTable::alloc(&gpu, 1000, 512).unwrap();
    table.fill_pattern(9);
    let idx: Vec<i64> = (0..777).map(|k| (k * 31 % 1000) as i64).collect();
    let mut cpu = CpuGather::new(&gpu, idx.len() * 512).unwrap();
    let stream = gpu.new_stream().unwrap();
    let mut out: DeviceBuffer<u8> = stream.alloc_zeros(idx.len() * 512).unwrap();
    cpu.gather(table.view(), &idx, &mut out).unwrap();
    assert_eq!(out.clone_dtoh().unwrap(), reference(table.view(), &idx));
    let ms = stream_copy(&stream, table.view(), &mut out).unwrap();
    assert!(ms >= 0.0);
    assert_eq!(
        out.clone_dtoh().unwrap(),
        table.as_bytes()[..idx.len() * 512]
    );
}

#[test]
fn pipeline_delivers_every_batch_in_order() {
    let Some(gpu) = gpu_or_skip("pipeline_delivers_every_batch_in_order") else {
        return;
    };
    let mut table = HostTable::alloc(&gpu, 5000, 384).unwrap();
    table.fill_pattern(21);
    let mut rng = Rng(77);
    // A short batch after a full one: the slot's stale indices beyond it must not be used.
    let batches: Vec<Vec<i32>> = [1000usize, 17, 0, 1000, 999, 1, 1000]
        .iter()
        .map(|&n| indices(&mut rng, n, 5000))
        .collect();
    // Bucketed on the GPU (the default), sorted on the host, and neither.
    let variants = [
        GatherOptions::default(),
        GatherOptions {
            sort: true,
            ..Default::default()
        },
        GatherOptions {
            bucket: false,
            ..Default::default()
        },
    ];
    // One batch per pass, and groups of 3 (7 batches: groups of 3, 3 and a short 1).
    for (options, group) in variants.iter().flat_map(|&o| [(o, 1), (o, 3)]) {
        let sort = (options.sort, options.bucket, group);
        let mut p = GatherPipeline::grouped(&gpu, table.view(), 1000, group, options).unwrap();
        assert_eq!(p.group(), group);
        let mut seen = Vec::new();
        p.run(&batches, |b, got| {
            assert_eq!(got.rows(), batches[b].len());
            assert_eq!(got.len_bytes(), batches[b].len() * 384);
            let first_of_group = b - b % group;
            let before: usize = batches[first_of_group..b].iter().map(Vec::len).sum();
            assert_eq!(got.offset(), before * 384, "batch {b} group {group}");
            assert_eq!(
                got.to_host()?,
                reference(table.view(), &batches[b]),
                "batch {b} (sort, bucket, group) {sort:?}"
            );
            seen.push(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [0, 1, 2, 3, 4, 5, 6]);
        let bad = vec![vec![1i32, 2], vec![3, 5000]];
        let err = p.run(&bad, |_, _| Ok(())).unwrap_err();
        assert!(
            err.to_string().contains("batch 1")
                && err.to_string().contains("index 5000 at position 1"),
            "{err}"
        );
        // The pipeline is usable again after the error, from batch 0.
        let mut again = Vec::new();
        p.run(&batches[..2], |b, _| {
            again.push(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(again, [0, 1]);

        // The same batches from device buffers (no host sort there).
        let on_device: Vec<DeviceBuffer<i32>> = batches
            .iter()
            .map(|b| p.stream().clone_htod(b).unwrap())
            .collect();
        if options.sort {
            let err = p.run_device(&on_device, |_, _| Ok(())).unwrap_err();
            assert!(err.to_string().contains("host sorting"), "{err}");
            continue;
        }
        let mut seen = Vec::new();
        p.run_device(&on_device, |b, got| {
            assert_eq!(
                got.to_host()?,
                reference(table.view(), &batches[b]),
                "device batch {b}"
            );
            seen.push(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [0, 1, 2, 3, 4, 5, 6]);
        let bad: Vec<DeviceBuffer<i32>> = bad
            .iter()
            .map(|b| p.stream().clone_htod(b).unwrap())
            .collect();
        let err = p.run_device(&bad, |_, _| Ok(())).unwrap_err().to_string();
        assert!(
            err.contains("batch 1") && err.contains("index 5000 at position 1"),
            "{err}"
        );
    }
    assert!(GatherPipeline::<i32>::grouped(&gpu, table.view(), 1000, 0, variants[0]).is_err());
}

#[test]
fn file_and_anonymous_tables_gather_like_allocated() {
    let Some(gpu) = gpu_or_skip("file_and_anonymous_tables_gather_like_allocated") else {
        return;
    };
    let path = std::env::temp_dir().join(format!("ferry-zerocopy-{}.bin", std::process::id()));
    let bytes: Vec<u8> = (0..3000 * 200).map(|i| (i * 7 + i / 200) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    let table = HostTable::map_file(&gpu, &path, 200).unwrap();
    assert_eq!((table.rows(), table.row_bytes()), (3000, 200));
    assert_eq!(table.as_bytes(), &bytes[..]);
    check::<i32>(&gpu, &table, 0, 200, GatherOptions::default(), 13);
    drop(table);
    std::fs::remove_file(&path).unwrap();
    let err = HostTable::map_file(&gpu, &path, 200).unwrap_err();
    assert!(err.to_string().contains("opening"), "{err}");

    for huge in [false, true] {
        let mut table = HostTable::alloc_registered(&gpu, 4096, 512, huge).unwrap();
        table.fill_pattern(17);
        check::<i64>(&gpu, &table, 0, 512, GatherOptions::default(), 19);
    }
}

#[test]
fn host_only_views_are_refused_by_gpu_gathers() {
    let Some(gpu) = gpu_or_skip("host_only_views_are_refused_by_gpu_gathers") else {
        return;
    };
    let bytes = vec![7u8; 64 * 100];
    let view = TableView::host_only(&bytes, 64).unwrap();
    let mut g = Gatherer::new(&gpu, GatherOptions::default()).unwrap();
    let mut out: DeviceBuffer<u8> = g.stream().alloc_zeros(64 * 3).unwrap();
    for bucket in [true, false] {
        g = Gatherer::new(
            &gpu,
            GatherOptions {
                bucket,
                ..Default::default()
            },
        )
        .unwrap();
        let e = g.gather(view, &[1i64, 2, 3], &mut out).unwrap_err();
        assert!(e.to_string().contains("CPU path"), "{e}");
    }
    // The CPU path reads it.
    let mut cpu = CpuGather::new(&gpu, 64 * 3).unwrap();
    cpu.gather(view, &[1i64, 2, 3], &mut out).unwrap();
    assert_eq!(out.clone_dtoh().unwrap(), vec![7u8; 64 * 3]);
}

#[test]
fn vmm_table_gathers_like_allocated() {
    let Some(gpu) = gpu_or_skip("vmm_table_gathers_like_allocated") else {
        return;
    };
    // 3 MiB + a bit: more than one 2 MiB granule, not a multiple of it.
    let mut table = HostTable::alloc_vmm(&gpu, 6151, 512).unwrap();
    assert!(table.as_bytes().iter().all(|&b| b == 0), "not zero-filled");
    assert!(format!("{table:?}").contains("vmm"));
    table.fill_pattern(23);
    for options in [
        GatherOptions::default(),
        GatherOptions {
            bucket: false,
            ..Default::default()
        },
    ] {
        check::<i32>(&gpu, &table, 0, 512, options, 29);
        check::<i64>(&gpu, &table, 64, 100, options, 31);
    }
    // The last row, next to the rounded-up tail of the mapping.
    let n = 4096usize;
    let mut idx: Vec<i64> = (0..n as i64).map(|i| (i * 37) % 6151).collect();
    idx[0] = 6150;
    let mut g = Gatherer::new(&gpu, GatherOptions::default()).unwrap();
    let mut out: DeviceBuffer<u8> = g.stream().alloc_zeros(n * 512).unwrap();
    g.gather(table.view(), &idx, &mut out).unwrap();
    assert_eq!(&out.clone_dtoh().unwrap()[..512], table.row(6150));
}

#[test]
fn bucketed_gather_matches_reference() {
    let Some(gpu) = gpu_or_skip("bucketed_gather_matches_reference") else {
        return;
    };
    // 8 MiB: several 64 KiB buckets for every row size, and a partial last bucket.
    let mut table = HostTable::alloc(&gpu, 2048, 4096 + 8).unwrap();
    table.fill_pattern(11);
    for (s, &rb) in [4usize, 12, 64, 100, 128, 1000, 4096].iter().enumerate() {
        let rows = table.len_bytes() / rb;
        let view = table.view_at(0, rows, rb).unwrap();
        let mut rng = Rng(97 + s as u64);
        for n in [1usize, 17, 5000] {
            let mut idx: Vec<i64> = indices(&mut rng, n, rows);
            if n > 20 {
                for k in 0..20 {
                    idx[k * 3] = idx[1]; // duplicates
                }
                idx[n - 1] = (rows - 1) as i64; // the last row, in the last bucket
            }
            let mut g = Gatherer::new(&gpu, GatherOptions::default()).unwrap();
            let dev = g.stream().clone_htod(&idx).unwrap();
            let mut out: DeviceBuffer<u8> = g.stream().alloc_zeros(n * rb).unwrap();
            g.gather_device_bucketed(view, &dev, &mut out)
                .unwrap_or_else(|e| panic!("row {rb}, n {n}: {e}"));
            assert!(
                out.clone_dtoh().unwrap() == reference(view, &idx),
                "bucketed gather differs: row {rb}, n {n}"
            );
            let idx32: Vec<i32> = idx.iter().map(|&i| i as i32).collect();
            let dev32 = g.stream().clone_htod(&idx32).unwrap();
            g.gather_device_bucketed(view, &dev32, &mut out).unwrap();
            assert!(
                out.clone_dtoh().unwrap() == reference(view, &idx32),
                "i32, row {rb}, n {n}"
            );
        }
    }
    // An out-of-range index is reported with its original position.
    let mut g = Gatherer::new(&gpu, GatherOptions::default()).unwrap();
    let idx = g.stream().clone_htod(&[3i64, 2047, 2048, 5]).unwrap();
    let mut out: DeviceBuffer<u8> = g.stream().alloc_zeros(4 * (4096 + 8)).unwrap();
    match g.gather_device_bucketed(table.view(), &idx, &mut out) {
        Err(ZeroCopyError::IndexOutOfRange {
            position,
            index,
            rows,
        }) => {
            assert_eq!((position, index, rows), (2, 2048, 2048));
        }
        other => panic!("expected an out-of-range error, got {other:?}"),
    }
}

#[test]
fn one_table_serves_a_gatherer_per_gpu() {
    let Some(gpu) = gpu_or_skip("one_table_serves_a_gatherer_per_gpu") else {
        return;
    };
    let count = Gpu::device_count().unwrap();
    let mut table = HostTable::alloc(&gpu, 20_000, 256).unwrap();
    table.fill_pattern(31);
    println!("{count} GPU(s); table placement {:?}", table.placement());
    // Unified addressing: the one mapping has the host's address on every GPU.
    assert_eq!(table.device_ptr(), table.host_ptr() as u64);
    let view = table.view();
    // One thread and one pipeline per GPU, all reading the same table at once.
    std::thread::scope(|s| {
        for ordinal in 0..count {
            s.spawn(move || {
                let g = Gpu::open(ordinal).unwrap();
                let mut rng = Rng(1000 + ordinal as u64);
                let batches: Vec<Vec<i64>> =
                    (0..4).map(|_| indices(&mut rng, 3000, 20_000)).collect();
                let mut p = GatherPipeline::new(&g, view, 3000, GatherOptions::default()).unwrap();
                let mut seen = 0;
                p.run(&batches, |b, got| {
                    assert!(
                        got.to_host()? == reference(view, &batches[b]),
                        "GPU {ordinal}, batch {b}"
                    );
                    seen += 1;
                    Ok(())
                })
                .unwrap();
                assert_eq!(seen, 4, "GPU {ordinal}");
            });
        }
    });
    if count < 2 {
        println!(
            "skipped (in part): one_table_serves_a_gatherer_per_gpu: one GPU, so one gatherer"
        );
    }
}

#[test]
fn shared_tables_are_one_memory() {
    let Some(gpu) = gpu_or_skip("shared_tables_are_one_memory") else {
        return;
    };
    let dir = std::path::Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("ferry-zerocopy-shared-{}", std::process::id()));
    let mut a = HostTable::create_shared(&gpu, &path, 3000, 128).unwrap();
    a.fill_pattern(41);
    // A second mapping of the same file, registered again, as another rank would.
    let b = HostTable::open_shared(&gpu, &path, 128).unwrap();
    assert_eq!((b.rows(), b.row_bytes()), (3000, 128));
    assert_ne!(a.host_ptr(), b.host_ptr());
    check::<i32>(&gpu, &b, 0, 128, GatherOptions::default(), 43);
    a.row_mut(7).fill(0x77);
    let mut g = Gatherer::new(&gpu, GatherOptions::default()).unwrap();
    let mut out: DeviceBuffer<u8> = g.stream().alloc_zeros(128).unwrap();
    g.gather(b.view(), &[7i64], &mut out).unwrap();
    assert_eq!(out.clone_dtoh().unwrap(), vec![0x77; 128]);
    drop((a, b));
    // Bad input: a length that is not whole rows, and a missing file.
    std::fs::write(&path, [0u8; 100]).unwrap();
    let err = HostTable::open_shared(&gpu, &path, 64).unwrap_err();
    assert!(
        matches!(err, ZeroCopyError::InvalidArgument { .. }),
        "{err}"
    );
    std::fs::remove_file(&path).unwrap();
    let err = HostTable::open_shared(&gpu, &path, 64).unwrap_err();
    assert!(err.to_string().contains("opening"), "{err}");
}
