//! Automatic layout for a flow that has no `layout:` yet: a layered (Sugiyama) drawing with
//! records flowing left to right, from `rust-sugiyama` (layering, crossing reduction and
//! coordinates, cycles tolerated).

use crate::graph::Node;

/// Horizontal gap between layers.
pub const GAP_X: f32 = 70.0;
/// Vertical gap between nodes of a layer.
pub const GAP_Y: f32 = 40.0;
/// The width of a node's header and footer content (the canvas draws them this wide, cutting
/// longer text).
pub const CONTENT_WIDTH: f32 = 170.0;
/// The width of a node's footer content.
pub const FOOTER_WIDTH: f32 = CONTENT_WIDTH;
/// A node's width: its content, the header's margins and room for a longer port row.
pub const NODE_WIDTH: f32 = CONTENT_WIDTH + 30.0;
/// The height of a node's header (name and type).
const HEADER: f32 = 44.0;
/// The height of a port's row on a node.
const PORT_ROW: f32 = 22.0;
/// The height of a node's footer: one line (its first finding) and margins.
const FOOTER: f32 = 22.0;

/// The size of a node on the canvas: header, one row per port, and room for a footer line
/// whether or not it shows one (so that a finding appearing while typing moves nothing). The
/// canvas draws nodes no larger for a flow's usual port names (a test checks it on every
/// example flow).
pub fn node_size(n: &Node) -> [f32; 2] {
    [
        NODE_WIDTH,
        HEADER + PORT_ROW * n.ports.len().max(1) as f32 + FOOTER,
    ]
}

/// Positions (top-left corners) for nodes of the given sizes connected by `edges`
/// (`(from, port, to)` indices): layers left to right, connected components stacked top to
/// bottom, and within a layer the nodes in the order of the ports that feed them (so the
/// edges of `out` and `late` do not cross).
pub fn layered(sizes: &[[f32; 2]], edges: &[(usize, usize, usize)]) -> Vec<[f32; 2]> {
    let mut out = sugiyama(sizes, edges);
    order_by_ports(&mut out, sizes, edges);
    out
}

fn sugiyama(sizes: &[[f32; 2]], edges: &[(usize, usize, usize)]) -> Vec<[f32; 2]> {
    let mut out = vec![[0.0, 0.0]; sizes.len()];
    if sizes.is_empty() {
        return out;
    }
    // rust-sugiyama lays layers out top to bottom: give it the nodes turned by a quarter, so
    // a node's height separates it from its neighbours within a layer.
    let vertices: Vec<(u32, (f64, f64))> = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u32, (f64::from(s[1] + GAP_Y), 1.0)))
        .collect();
    let links: Vec<(u32, u32)> = edges
        .iter()
        .filter(|(a, _, b)| a != b && *a < sizes.len() && *b < sizes.len())
        .map(|&(a, _, b)| (a as u32, b as u32))
        .collect();
    let config = rust_sugiyama::configure::Config {
        vertex_spacing: 0.0,
        dummy_vertices: true,
        dummy_size: f64::from(GAP_Y),
        ..Default::default()
    };
    let layouts = rust_sugiyama::from_vertices_and_edges(&vertices, &links, &config);
    let width = sizes.iter().map(|s| s[0]).fold(0.0, f32::max) + GAP_X;
    let mut top = 0.0f32;
    for (positions, _, _) in layouts {
        // Layers by rank (its y); within a layer, its x is the position along the layer.
        let mut ranks: Vec<f64> = positions.iter().map(|(_, (_, y))| *y).collect();
        ranks.sort_by(f64::total_cmp);
        ranks.dedup();
        let min_x = positions
            .iter()
            .map(|(_, (x, _))| *x)
            .fold(f64::MAX, f64::min);
        let mut bottom = top;
        for (id, (x, y)) in &positions {
            let layer = ranks.partition_point(|r| r < y);
            let i = *id;
            if i >= out.len() {
                continue;
            }
            let along = (x - min_x) as f32;
            out[i] = [layer as f32 * width, top + along];
            bottom = bottom.max(top + along + sizes[i][1]);
        }
        top = bottom + GAP_Y * 2.0;
    }
    out
}

/// Reorder the nodes of each layer by where their inputs come from (the producing node's
/// position plus the row of its port) and line each up with its inputs, left to right.
fn order_by_ports(pos: &mut [[f32; 2]], sizes: &[[f32; 2]], edges: &[(usize, usize, usize)]) {
    let mut layers: Vec<f32> = pos.iter().map(|p| p[0]).collect();
    layers.sort_by(f32::total_cmp);
    layers.dedup();
    for x in layers {
        let members: Vec<usize> = (0..pos.len()).filter(|&i| pos[i][0] == x).collect();
        // Where each node would like its top: level with the ports feeding it.
        let wanted = |i: usize| {
            let feeds: Vec<f32> = edges
                .iter()
                .filter(|(a, _, b)| *b == i && *a != i && pos[*a][0] < x)
                .map(|&(a, port, _)| pos[a][1] + PORT_ROW * port as f32)
                .collect();
            if feeds.is_empty() {
                pos[i][1]
            } else {
                feeds.iter().sum::<f32>() / feeds.len() as f32
            }
        };
        let mut order: Vec<(f32, usize)> = members.iter().map(|&i| (wanted(i), i)).collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut bottom = f32::MIN;
        for (y, i) in order {
            let y = y.max(bottom + GAP_Y);
            pos[i][1] = y;
            bottom = y + sizes[i][1];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_go_left_to_right_and_nodes_do_not_overlap() {
        let sizes = vec![[190.0, 100.0]; 6];
        // a -> b -> d, a -> c -> d, e alone, f -> f
        let pos = layered(
            &sizes,
            &[(0, 0, 1), (0, 0, 2), (1, 0, 3), (2, 0, 3), (5, 0, 5)],
        );
        assert!(pos[0][0] < pos[1][0] && pos[1][0] == pos[2][0] && pos[2][0] < pos[3][0]);
        for i in 0..pos.len() {
            for j in 0..i {
                let overlap_x = (pos[i][0] - pos[j][0]).abs() < 190.0;
                let overlap_y = (pos[i][1] - pos[j][1]).abs() < 100.0;
                assert!(!(overlap_x && overlap_y), "{i} and {j} overlap: {pos:?}");
            }
        }
    }

    #[test]
    fn a_layer_follows_the_order_of_the_ports_that_feed_it() {
        let sizes = vec![[190.0, 100.0]; 3];
        // 0.port1 -> 1, 0.port0 -> 2: node 2 goes above node 1.
        let pos = layered(&sizes, &[(0, 1, 1), (0, 0, 2)]);
        assert!(pos[2][1] < pos[1][1], "{pos:?}");
        let pos = layered(&sizes, &[(0, 0, 1), (0, 1, 2)]);
        assert!(pos[1][1] < pos[2][1], "{pos:?}");
    }
}
