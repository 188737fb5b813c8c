//! Host-to-device copies of f32 batches through page-locked staging buffers.

use candle_core::cuda::cudarc::driver::{
    result, sys, CudaEvent, CudaSlice, CudaStream, DevicePtrMut, PinnedHostSlice,
};
use candle_core::cuda::CudaDevice;
use candle_core::{Error, Result};

/// A ring of page-locked host buffers through which f32 data goes to a CUDA device without the
/// host waiting for the device.
///
/// A copy from pageable memory makes the host wait until the device's stream reaches it (the
/// driver stages it through a small pinned buffer); a copy from a page-locked buffer is only
/// queued. [`PinnedUpload::upload`] copies the data into the next buffer of the ring and queues
/// its copy to the device on candle's stream, behind the work already queued. A buffer is
/// refilled once the copy from it, `slots` uploads ago, has finished: the host runs at most
/// `slots` uploads ahead of the device.
///
/// Like candle's own operations, the uploads go to the stream of the calling thread (candle's
/// CUDA devices use the per-thread default stream): call it from the thread that runs the
/// model.
pub struct PinnedUpload {
    device: CudaDevice,
    slots: Vec<Option<Slot>>,
    next: usize,
}

/// A staging buffer and the event recorded after the last copy from it.
struct Slot {
    host: PinnedHostSlice<f32>,
    copied: CudaEvent,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The device may still be reading the buffer: wait before it is freed. (cudarc's own
        // event in `host` is never recorded: the copy is queued by `memcpy_htod_async`, not
        // through cudarc's `HostSlice`.)
        let _ = self.copied.synchronize();
    }
}

fn driver(what: &'static str) -> impl FnOnce(result::DriverError) -> Error {
    move |e| Error::wrap(e).context(format!("cuda upload: {what}"))
}

impl PinnedUpload {
    /// A ring of `slots` (at least 1) staging buffers for `device`, allocated on first use.
    pub fn new(device: &CudaDevice, slots: usize) -> Self {
        PinnedUpload {
            device: device.clone(),
            slots: (0..slots.max(1)).map(|_| None).collect(),
            next: 0,
        }
    }

    /// `data` in a new device buffer. The copy is queued on the stream; the host waits only for
    /// the copy made from the same buffer `slots` uploads ago.
    pub fn upload(&mut self, data: &[f32]) -> Result<CudaSlice<f32>> {
        let stream = self.device.cuda_stream();
        let k = self.next;
        self.next = (k + 1) % self.slots.len();
        let mut slot = match self.slots[k].take() {
            Some(s) if s.host.len() >= data.len() => s,
            // Dropping a smaller buffer waits for its last copy.
            _ => Slot::new(&stream, data.len())?,
        };
        slot.copied
            .synchronize()
            .map_err(driver("waiting for an earlier copy"))?;
        let host = &mut slot
            .host
            .as_mut_slice()
            .map_err(driver("mapping the staging buffer"))?[..data.len()];
        host.copy_from_slice(data);
        // SAFETY: every element is written by the copy queued next, before any use.
        let mut dst = unsafe { stream.alloc::<f32>(data.len()) }
            .map_err(driver("allocating device memory"))?;
        {
            let (ptr, _record) = dst.device_ptr_mut(&stream);
            // SAFETY: `host` is page-locked and stays alive and unwritten until `copied`,
            // recorded behind the copy, has completed; `dst` holds `data.len()` elements.
            unsafe { result::memcpy_htod_async(ptr, host, stream.cu_stream()) }
                .map_err(driver("queueing the copy"))?;
        }
        slot.copied
            .record(&stream)
            .map_err(driver("recording the copy's event"))?;
        self.slots[k] = Some(slot);
        Ok(dst)
    }
}

impl Slot {
    /// A staging buffer of `len` floats (at least one) and its event.
    fn new(stream: &CudaStream, len: usize) -> Result<Self> {
        let ctx = stream.context();
        // SAFETY: the buffer is written before any read.
        let host = unsafe { ctx.alloc_pinned::<f32>(len.max(1)) }
            .map_err(driver("allocating a page-locked staging buffer"))?;
        // A blocking-sync event: a host waiting for the device sleeps instead of spinning a
        // core that the data loader's threads could use.
        let copied = ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC))
            .map_err(driver("creating an event"))?;
        Ok(Slot { host, copied })
    }
}
