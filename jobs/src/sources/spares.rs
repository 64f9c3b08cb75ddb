//! Things emptied by one thread for another to fill again (a file's chunks, JSON parts and
//! decoders): allocated once per thread in flight rather than once per piece, so their pages
//! are not faulted in (and zeroed by the kernel) again for every piece.

use std::sync::Mutex;

pub(crate) struct Spares<T>(Mutex<Vec<T>>);

impl<T> Default for Spares<T> {
    fn default() -> Self {
        Self(Mutex::new(Vec::new()))
    }
}

impl<T> Spares<T> {
    pub fn take(&self) -> Option<T> {
        self.0.lock().ok()?.pop()
    }

    pub fn give(&self, spare: T) {
        if let Ok(mut spares) = self.0.lock() {
            spares.push(spare);
        }
    }
}
