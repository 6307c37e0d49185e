//! The CPU baseline and fallback: threads copy rows into a pinned staging buffer, then one
//! host-to-device copy moves the batch.

use ferry_gpu::{DeviceBuffer, Gpu, MappedHostBuffer};
use rayon::prelude::*;

use crate::error::{Result, ZeroCopyError, invalid};
use crate::index::{GatherIndex, validate_indices};
use crate::table::TableView;

/// Copies the rows `indices` names into `dst` (row after row) on all cores; checks every
/// index first.
pub fn gather_rows_cpu<I: GatherIndex>(
    table: TableView<'_>,
    indices: &[I],
    dst: &mut [u8],
) -> Result<()> {
    validate_indices(indices, table.rows())?;
    let rb = table.row_bytes();
    if dst.len() < indices.len() * rb {
        return Err(invalid(format!(
            "{} rows of {rb} bytes do not fit in {} bytes",
            indices.len(),
            dst.len()
        )));
    }
    dst[..indices.len() * rb]
        .par_chunks_mut(rb)
        .zip(indices.par_iter())
        .for_each(|(row, &i)| row.copy_from_slice(table.row(i.to_i64() as usize)));
    Ok(())
}

/// CPU gather into a pinned staging buffer, then a copy to the device.
#[derive(Debug)]
pub struct CpuGather {
    staging: MappedHostBuffer,
}

impl CpuGather {
    /// A gatherer whose staging buffer holds `capacity_bytes`.
    pub fn new(gpu: &Gpu, capacity_bytes: usize) -> Result<Self> {
        let staging =
            MappedHostBuffer::new(gpu, capacity_bytes).map_err(|source| ZeroCopyError::Pin {
                bytes: capacity_bytes,
                how: "cuMemHostAlloc",
                source,
            })?;
        Ok(CpuGather { staging })
    }

    /// Gathers into staging on the CPU and copies the batch into `out`; blocks until done.
    pub fn gather<I: GatherIndex>(
        &mut self,
        table: TableView<'_>,
        indices: &[I],
        out: &mut DeviceBuffer<u8>,
    ) -> Result<()> {
        let bytes = indices.len() * table.row_bytes();
        if bytes > self.staging.len() {
            return Err(invalid(format!(
                "a batch of {bytes} bytes exceeds the staging buffer of {}",
                self.staging.len()
            )));
        }
        let staging = &mut self.staging.as_mut_slice()[..bytes];
        gather_rows_cpu(table, indices, staging)?;
        out.copy_htod(staging)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_only_views_gather_on_the_cpu() {
        // Ordinary memory, as after a failed pin: 5 rows of 3 bytes.
        let bytes: Vec<u8> = (0..15).collect();
        let view = TableView::host_only(&bytes, 3).unwrap();
        assert!(!view.is_mapped());
        assert_eq!((view.rows(), view.row_bytes()), (5, 3));
        let mut dst = vec![0u8; 9];
        gather_rows_cpu(view, &[4i64, 0, 4], &mut dst).unwrap();
        assert_eq!(dst, [12, 13, 14, 0, 1, 2, 12, 13, 14]);
        let e = gather_rows_cpu(view, &[5i32], &mut dst).unwrap_err();
        assert!(e.to_string().contains("index 5 at position 0"), "{e}");
        assert!(TableView::host_only(&bytes, 4).is_err());
        assert!(TableView::host_only(&bytes, 0).is_err());
        let e = crate::gather::check_mapped(&view).unwrap_err();
        assert!(e.to_string().contains("CPU path"), "{e}");
    }
}
