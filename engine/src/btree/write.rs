//! Tree changes inside a write transaction: insert with splits, remove with merge and
//! redistribution, root growth and collapse. Nodes are decoded into the transaction's dirty
//! set ([`Pages`]) and encoded once at commit.
//!
//! Invariants kept here: after every call each node fits its page; a non-root node that fell
//! below a quarter page after a removal was merged with or rebalanced against a sibling; the
//! root is a leaf or a branch with at least one key.

use hadal_format::PageNo;
use hadal_format::limits::PAGE_HEADER_BYTES;
use hadal_format::page::PageType;

use super::node::{BranchNode, LeafCell, LeafNode, LeafView, branch_cell_size, choose_split};
use super::{BranchView, PageSource, TREE_DEPTH_MAX, page_type};
use crate::error::{Error, Result};
use crate::txn::{Node, Pages};

use bytes::Bytes;

type Path = Vec<(PageNo, usize)>;

/// Inserts or replaces `cell`. Returns the new root and the replaced cell, if any.
pub(crate) fn insert(
    pg: &mut Pages<'_>,
    root: PageNo,
    cell: LeafCell,
) -> Result<(PageNo, Option<LeafCell>)> {
    let (mut path, leaf_no) = descend(pg, root, &cell.key)?;
    let leaf = pg.leaf_mut(leaf_no)?;
    let old = match leaf.search(&cell.key) {
        Ok(i) => Some(std::mem::replace(&mut leaf.cells[i], cell)),
        Err(i) => {
            leaf.cells.insert(i, cell);
            None
        }
    };
    let root = split_upward(pg, root, &mut path, leaf_no)?;
    Ok((root, old))
}

/// Removes `key`. Returns the new root and the removed cell, if the key was there.
pub(crate) fn remove(
    pg: &mut Pages<'_>,
    root: PageNo,
    key: &[u8],
) -> Result<(PageNo, Option<LeafCell>)> {
    let (mut path, leaf_no) = descend(pg, root, key)?;
    let present = match pg.dirty_leaf(leaf_no) {
        Some(leaf) => leaf.search(key).is_ok(),
        None => {
            let page = pg.page(leaf_no)?;
            LeafView::new(leaf_no, &page)?.search(key)?.is_ok()
        }
    };
    if !present {
        return Ok((root, None));
    }
    let leaf = pg.leaf_mut(leaf_no)?;
    let Ok(i) = leaf.search(key) else {
        return Err(Error::corrupt(
            format!("page {leaf_no}"),
            "key vanished while decoding",
        ));
    };
    let old = leaf.cells.remove(i);
    let root = rebalance_upward(pg, root, &mut path, leaf_no)?;
    Ok((root, Some(old)))
}

/// The path of (branch, child index) from `root` to the leaf for `key`, and that leaf.
fn descend(pg: &Pages<'_>, root: PageNo, key: &[u8]) -> Result<(Path, PageNo)> {
    let mut path = Path::new();
    let mut page_no = root;
    for _ in 0..TREE_DEPTH_MAX {
        if let Some(branch) = pg.dirty_branch(page_no) {
            let i = branch.child_index(key);
            path.push((page_no, i));
            page_no = branch.children[i];
            continue;
        }
        if pg.dirty_leaf(page_no).is_some() {
            return Ok((path, page_no));
        }
        let page = pg.page(page_no)?;
        match page_type(page_no, &page)? {
            PageType::Leaf => return Ok((path, page_no)),
            PageType::Branch => {
                let view = BranchView::new(page_no, &page)?;
                let i = view.child_index(key)?;
                path.push((page_no, i));
                page_no = view.child(i)?;
            }
            other => {
                return Err(Error::corrupt(
                    format!("page {page_no}"),
                    format!("{other:?} page inside a tree"),
                ));
            }
        }
    }
    Err(Error::corrupt(
        format!("tree rooted at page {root}"),
        "deeper than any real tree: pointer cycle",
    ))
}

fn split_upward(
    pg: &mut Pages<'_>,
    root: PageNo,
    path: &mut Path,
    mut node: PageNo,
) -> Result<PageNo> {
    loop {
        if pg.node_size(node)? <= pg.page_size() {
            return Ok(root);
        }
        let (separator, right) = split(pg, node)?;
        match path.pop() {
            Some((parent, idx)) => {
                let branch = pg.branch_mut(parent)?;
                branch.keys.insert(idx, separator);
                branch.children.insert(idx + 1, right);
                node = parent;
            }
            None => {
                let new_root = pg.alloc()?;
                let branch = BranchNode {
                    keys: vec![separator],
                    children: vec![node, right],
                };
                pg.put(new_root, Node::Branch(branch));
                // A split of an oversized node can leave a half still oversized only if a
                // cell exceeded its limit, which the cell-size checks rule out.
                return Ok(new_root);
            }
        }
    }
}

/// Splits an overfull node in two; returns the separator and the new right sibling.
fn split(pg: &mut Pages<'_>, page_no: PageNo) -> Result<(Bytes, PageNo)> {
    let right_no = pg.alloc()?;
    let capacity = pg.page_size() - PAGE_HEADER_BYTES;
    match pg.take_node(page_no)? {
        Node::Leaf(mut leaf) => {
            let sizes: Vec<usize> = leaf.cells.iter().map(LeafCell::size).collect();
            let k = choose_split(&sizes, capacity).ok_or_else(|| unsplittable(page_no))?;
            let right = LeafNode {
                cells: leaf.cells.split_off(k),
            };
            let separator = right.cells[0].key.clone();
            pg.put(page_no, Node::Leaf(leaf));
            pg.put(right_no, Node::Leaf(right));
            Ok((separator, right_no))
        }
        Node::Branch(mut branch) => {
            let (left, separator, right) =
                split_branch(&mut branch, capacity).ok_or_else(|| unsplittable(page_no))?;
            debug_assert!(branch.keys.is_empty());
            pg.put(page_no, Node::Branch(left));
            pg.put(right_no, Node::Branch(right));
            Ok((separator, right_no))
        }
    }
}

fn unsplittable(page_no: PageNo) -> Error {
    Error::Invalid(format!(
        "node at page {page_no} has cells too large to split"
    ))
}

/// Splits a branch's keys around a middle key that moves up; both halves fit `capacity`.
fn split_branch(
    branch: &mut BranchNode,
    capacity: usize,
) -> Option<(BranchNode, Bytes, BranchNode)> {
    let sizes: Vec<usize> = branch.keys.iter().map(|k| branch_cell_size(k)).collect();
    let total: usize = sizes.iter().sum();
    let mut best: Option<(usize, usize)> = None;
    let mut left = 0;
    for m in 1..sizes.len().saturating_sub(1) {
        left += sizes[m - 1];
        let right = total - left - sizes[m];
        if left <= capacity && right <= capacity {
            let imbalance = left.abs_diff(right);
            if best.is_none_or(|(_, b)| imbalance < b) {
                best = Some((m, imbalance));
            }
        }
    }
    let (m, _) = best?;
    let right_keys = branch.keys.split_off(m + 1);
    let separator = branch.keys.pop()?;
    let right_children = branch.children.split_off(m + 1);
    let left = BranchNode {
        keys: std::mem::take(&mut branch.keys),
        children: std::mem::take(&mut branch.children),
    };
    Some((
        left,
        separator,
        BranchNode {
            keys: right_keys,
            children: right_children,
        },
    ))
}

fn rebalance_upward(
    pg: &mut Pages<'_>,
    root: PageNo,
    path: &mut Path,
    mut node: PageNo,
) -> Result<PageNo> {
    loop {
        let Some((parent, idx)) = path.pop() else {
            return collapse_root(pg, root);
        };
        if pg.node_size(node)? >= pg.page_size() / 4 {
            return Ok(root);
        }
        merge_or_redistribute(pg, parent, idx)?;
        if pg.node_size(parent)? > pg.page_size() {
            // A longer separator moved into the parent and overfilled it.
            return split_upward(pg, root, path, parent);
        }
        node = parent;
    }
}

/// While the root is a branch without keys, its only child becomes the root.
fn collapse_root(pg: &mut Pages<'_>, mut root: PageNo) -> Result<PageNo> {
    while let Some(branch) = pg.dirty_branch(root) {
        if !branch.keys.is_empty() {
            break;
        }
        let child = branch.children[0];
        pg.free(root)?;
        root = child;
    }
    Ok(root)
}

/// Fixes the underfull child `idx` of `parent` by merging it with a sibling, or, if the two do
/// not fit one page, by splitting their combined cells evenly.
fn merge_or_redistribute(pg: &mut Pages<'_>, parent: PageNo, idx: usize) -> Result<()> {
    let capacity = pg.page_size() - PAGE_HEADER_BYTES;
    let (li, ri, left_no, right_no, separator) = {
        let branch = pg.branch_mut(parent)?;
        let (li, ri) = if idx > 0 {
            (idx - 1, idx)
        } else {
            (idx, idx + 1)
        };
        if ri >= branch.children.len() {
            return Err(Error::corrupt(
                format!("page {parent}"),
                "branch with a single child",
            ));
        }
        (
            li,
            ri,
            branch.children[li],
            branch.children[ri],
            branch.keys[li].clone(),
        )
    };
    let left = pg.take_node(left_no)?;
    let right = pg.take_node(right_no)?;
    let new_separator = match (left, right) {
        (Node::Leaf(mut l), Node::Leaf(r)) => {
            l.cells.extend(r.cells);
            if l.size() <= pg.page_size() {
                pg.put(left_no, Node::Leaf(l));
                None
            } else {
                let sizes: Vec<usize> = l.cells.iter().map(LeafCell::size).collect();
                let k = choose_split(&sizes, capacity).ok_or_else(|| unsplittable(left_no))?;
                let r = LeafNode {
                    cells: l.cells.split_off(k),
                };
                let sep = r.cells[0].key.clone();
                pg.put(left_no, Node::Leaf(l));
                pg.put(right_no, Node::Leaf(r));
                Some(sep)
            }
        }
        (Node::Branch(mut l), Node::Branch(r)) => {
            l.keys.push(separator);
            l.keys.extend(r.keys);
            l.children.extend(r.children);
            if l.size() <= pg.page_size() {
                pg.put(left_no, Node::Branch(l));
                None
            } else {
                let (a, sep, b) =
                    split_branch(&mut l, capacity).ok_or_else(|| unsplittable(left_no))?;
                pg.put(left_no, Node::Branch(a));
                pg.put(right_no, Node::Branch(b));
                Some(sep)
            }
        }
        _ => {
            return Err(Error::corrupt(
                format!("page {parent}"),
                "children at different levels",
            ));
        }
    };
    match new_separator {
        None => {
            pg.free(right_no)?;
            let branch = pg.branch_mut(parent)?;
            branch.keys.remove(li);
            branch.children.remove(ri);
        }
        Some(sep) => pg.branch_mut(parent)?.keys[li] = sep,
    }
    Ok(())
}
