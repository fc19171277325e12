//! The panels of the window, each a view with `fn ui(&mut self, ui, ...)` over the
//! [`crate::state::Designer`] it shows.

pub mod canvas;
pub mod inspector;
pub mod live;
pub mod palette;
pub mod problems;

pub use canvas::Canvas;
pub use inspector::Inspector;
pub use live::LiveView;
pub use palette::{Palette, PaletteDrag};
pub use problems::Problems;
