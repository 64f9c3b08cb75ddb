//! A Parquet file's row groups encoded column by column on several threads.
//!
//! Encoding (dictionaries, statistics, zstd, page encryption) is most of the work of writing a
//! part; arrow's `ArrowWriter` does it on the thread that writes. Here the columns are dealt out
//! to `lanes` threads: each batch goes to every lane (an `Arc` copy), each lane encodes its
//! columns, and at the end of a row group the lanes hand back their column chunks, which are
//! appended in schema order. The lane threads live as long as the file: a thread per row group
//! would leave each of glibc's per-thread heaps holding freed pages (35 MiB more at 1M rows). The file layout, metadata and encryption are arrow's own
//! (`ArrowWriter::into_serialized_writer`), so the bytes a reader sees are those of a file
//! written by `ArrowWriter`; only the work is spread. Batches reach the lanes through bounded
//! async channels, so a slow encoder slows the writer instead of filling memory.
//!
//! Every lane waits for the slowest at each batch, so the fields are dealt by cost: each lane
//! times its fields, and the next row group's fields are dealt heaviest first to the least
//! loaded lane. (Dealt round-robin, lineitem's three high-entropy columns, the ones zstd works
//! hardest on, all fell to one of two lanes.)

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves,
};
use parquet::errors::{ParquetError, Result};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use tokio::sync::{mpsc, oneshot};

/// Batches queued per lane: one being encoded, one waiting.
const LANE_QUEUE: usize = 1;

/// Bytes the file writer produced and the caller has not taken yet.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes one Parquet file whose row groups are encoded by `lanes` threads. The encoded bytes
/// come back from [`Self::write`] and [`Self::finish`] for the caller to upload.
pub(crate) struct ParallelFileWriter {
    file: SerializedFileWriter<SharedBuffer>,
    factory: ArrowRowGroupWriterFactory,
    buffer: SharedBuffer,
    /// The top-level fields each lane encodes.
    fields_of_lane: Vec<Vec<usize>>,
    /// The time each top-level field took to encode in the last row group.
    field_costs: Vec<Duration>,
    /// The leaf columns (writers) of each top-level field, in schema order.
    leaves_of_field: Vec<std::ops::Range<usize>>,
    /// A channel to each lane's thread; the threads end when these are dropped.
    senders: Vec<mpsc::Sender<LaneWork>>,
    rows_per_row_group: usize,
    /// Rows in the row group being encoded, if one is.
    rows_in_group: Option<usize>,
}

/// What a lane hands back at a row group's end: its column chunks by leaf index, and the time
/// each of its top-level fields took.
struct LaneAnswer {
    chunks: Vec<(usize, ArrowColumnChunk)>,
    costs: Vec<(usize, Duration)>,
}

/// A top-level field a lane encodes: its leaf columns' writers (by leaf index), and the time
/// spent on them in this row group.
struct LaneField {
    field: usize,
    writers: Vec<(usize, ArrowColumnWriter)>,
    cost: Duration,
}

type LaneWriters = Vec<LaneField>;

/// What a lane thread is asked to do.
enum LaneWork {
    /// A row group starts: these are its writers for the lane's fields.
    RowGroup(LaneWriters),
    Batch(RecordBatch),
    /// The row group ends: close the writers and answer with their chunks.
    Close(oneshot::Sender<Result<LaneAnswer>>),
}

impl ParallelFileWriter {
    pub fn try_new(
        schema: SchemaRef,
        properties: WriterProperties,
        rows_per_row_group: usize,
        lanes: usize,
    ) -> Result<Self> {
        let buffer = SharedBuffer::default();
        let writer = ArrowWriter::try_new(buffer.clone(), schema.clone(), Some(properties))?;
        let (file, factory) = writer.into_serialized_writer()?;
        let descriptor = file.schema_descr();
        // A field's leaves are consecutive in the Parquet schema.
        let mut leaves_of_field: Vec<std::ops::Range<usize>> = Vec::new();
        for leaf in 0..descriptor.num_columns() {
            let field = descriptor.get_column_root_idx(leaf);
            if field == leaves_of_field.len() {
                leaves_of_field.push(leaf..leaf + 1);
            } else {
                leaves_of_field[field].end = leaf + 1;
            }
        }
        // Until a row group has been timed, every field counts the same (dealt round-robin).
        let lane_count = lanes.clamp(1, schema.fields().len().max(1));
        let field_costs = vec![Duration::ZERO; schema.fields().len()];
        let mut senders = Vec::with_capacity(lane_count);
        for _ in 0..lane_count {
            let (tx, rx) = mpsc::channel(LANE_QUEUE);
            let schema = schema.clone();
            std::thread::Builder::new()
                .name("carga-encode".into())
                .spawn(move || run_lane(&schema, rx))
                .map_err(|e| ParquetError::External(Box::new(e)))?;
            senders.push(tx);
        }
        Ok(Self {
            file,
            factory,
            buffer,
            fields_of_lane: deal_by_cost(&field_costs, lane_count),
            field_costs,
            leaves_of_field,
            senders,
            rows_per_row_group: rows_per_row_group.max(1),
            rows_in_group: None,
        })
    }

    /// Encodes `batch`; returns the bytes of any row group it completed.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<Bytes> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let rows = match self.rows_in_group {
                Some(rows) => rows,
                None => {
                    self.start_row_group().await?;
                    0
                }
            };
            let take = (self.rows_per_row_group - rows).min(batch.num_rows() - offset);
            let slice = batch.slice(offset, take);
            for sender in &self.senders {
                send(sender, LaneWork::Batch(slice.clone())).await?;
            }
            self.rows_in_group = Some(rows + take);
            offset += take;
            if rows + take >= self.rows_per_row_group {
                self.close_row_group().await?;
            }
        }
        Ok(self.take_bytes())
    }

    /// Closes the last row group and writes the footer; returns the remaining bytes.
    pub async fn finish(mut self) -> Result<Bytes> {
        self.close_row_group().await?;
        self.file.finish()?;
        Ok(self.take_bytes())
    }

    fn take_bytes(&self) -> Bytes {
        Bytes::from(std::mem::take(
            &mut *self.buffer.0.lock().expect("buffer lock"),
        ))
    }

    async fn start_row_group(&mut self) -> Result<()> {
        let index = self.file.flushed_row_groups().len();
        let mut writers: Vec<Option<ArrowColumnWriter>> = self
            .factory
            .create_column_writers(index)?
            .into_iter()
            .map(Some)
            .collect();
        for (fields, sender) in self.fields_of_lane.iter().zip(&self.senders) {
            let lane = fields
                .iter()
                .map(|&field| LaneField {
                    field,
                    writers: self.leaves_of_field[field]
                        .clone()
                        .map(|leaf| (leaf, writers[leaf].take().expect("each leaf has one lane")))
                        .collect(),
                    cost: Duration::ZERO,
                })
                .collect();
            send(sender, LaneWork::RowGroup(lane)).await?;
        }
        self.rows_in_group = Some(0);
        Ok(())
    }

    async fn close_row_group(&mut self) -> Result<()> {
        if self.rows_in_group.take().is_none() {
            return Ok(());
        }
        let mut answers = Vec::with_capacity(self.senders.len());
        for sender in &self.senders {
            let (tx, rx) = oneshot::channel();
            send(sender, LaneWork::Close(tx)).await?;
            answers.push(rx);
        }
        let mut chunks = Vec::new();
        for answer in answers {
            let answer = answer.await.map_err(|_| lane_stopped())??;
            chunks.extend(answer.chunks);
            for (field, cost) in answer.costs {
                self.field_costs[field] = cost;
            }
        }
        self.fields_of_lane = deal_by_cost(&self.field_costs, self.senders.len());
        chunks.sort_by_key(|(leaf, _)| *leaf);
        let mut row_group = self.file.next_row_group()?;
        for (_, chunk) in chunks {
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        self.file.flush()?;
        Ok(())
    }
}

async fn send(lane: &mpsc::Sender<LaneWork>, work: LaneWork) -> Result<()> {
    lane.send(work).await.map_err(|_| lane_stopped())
}

fn lane_stopped() -> ParquetError {
    ParquetError::General("an encoding thread stopped".into())
}

/// A lane's thread: encodes its fields' columns of every batch, row group after row group, until
/// the file is done. An error is kept and given as the row group's answer.
fn run_lane(schema: &SchemaRef, mut work: mpsc::Receiver<LaneWork>) {
    let mut lane: Option<LaneWriters> = None;
    let mut failed: Option<ParquetError> = None;
    while let Some(next) = work.blocking_recv() {
        match next {
            LaneWork::RowGroup(writers) => {
                lane = Some(writers);
                failed = None;
            }
            LaneWork::Batch(batch) => {
                if let (Some(writers), None) = (lane.as_mut(), &failed) {
                    failed = encode(schema, writers, &batch).err();
                }
            }
            LaneWork::Close(answer) => {
                let chunks = match (failed.take(), lane.take()) {
                    (Some(e), _) => Err(e),
                    (None, Some(writers)) => close(writers),
                    (None, None) => Ok(LaneAnswer {
                        chunks: Vec::new(),
                        costs: Vec::new(),
                    }),
                };
                let _ = answer.send(chunks);
            }
        }
    }
}

fn encode(schema: &SchemaRef, lane: &mut LaneWriters, batch: &RecordBatch) -> Result<()> {
    for field in lane {
        let started = Instant::now();
        let leaves = compute_leaves(schema.field(field.field), batch.column(field.field))?;
        for ((_, writer), leaf) in field.writers.iter_mut().zip(leaves) {
            writer.write(&leaf)?;
        }
        field.cost += started.elapsed();
    }
    Ok(())
}

fn close(lane: LaneWriters) -> Result<LaneAnswer> {
    let mut answer = LaneAnswer {
        chunks: Vec::new(),
        costs: Vec::with_capacity(lane.len()),
    };
    for field in lane {
        // Closing compresses and encrypts the last pages: part of the field's cost.
        let started = Instant::now();
        for (leaf, writer) in field.writers {
            answer.chunks.push((leaf, writer.close()?));
        }
        answer
            .costs
            .push((field.field, field.cost + started.elapsed()));
    }
    Ok(answer)
}

/// Deals the fields out to `lanes` lanes, heaviest first, each to the lane with the least cost so
/// far (fewest fields on a tie, so fields of equal cost go round-robin); each lane's fields in
/// schema order. The slowest lane is then within one field's cost of an even share.
fn deal_by_cost(costs: &[Duration], lanes: usize) -> Vec<Vec<usize>> {
    let lanes = lanes.max(1);
    let mut heaviest_first: Vec<usize> = (0..costs.len()).collect();
    heaviest_first.sort_by_key(|&field| (std::cmp::Reverse(costs[field]), field));
    let mut load = vec![Duration::ZERO; lanes];
    let mut fields_of_lane = vec![Vec::new(); lanes];
    for field in heaviest_first {
        let lane = (0..lanes)
            .min_by_key(|&lane| (load[lane], fields_of_lane[lane].len(), lane))
            .expect("at least one lane");
        load[lane] += costs[field];
        fields_of_lane[lane].push(field);
    }
    for fields in &mut fields_of_lane {
        fields.sort_unstable();
    }
    fields_of_lane
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        ArrayRef, Decimal128Array, Int64Array, ListArray, StringArray, StructArray,
    };
    use arrow::datatypes::{DataType, Field, Int32Type, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn batch(start: i64, rows: usize) -> RecordBatch {
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(start..start + rows as i64));
        let names: ArrayRef =
            Arc::new(StringArray::from_iter((0..rows).map(|i| {
                (i % 5 != 0).then(|| format!("name {}", (start as usize + i) % 7))
            })));
        let amounts: ArrayRef = Arc::new(
            Decimal128Array::from_iter_values((0..rows as i128).map(|i| i * 125))
                .with_precision_and_scale(12, 2)
                .unwrap(),
        );
        let lists: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(
            (0..rows).map(|i| Some(vec![Some(i as i32), None])),
        ));
        let point: ArrayRef = Arc::new(StructArray::from(vec![
            (
                Arc::new(Field::new("x", DataType::Int64, true)),
                Arc::new(Int64Array::from_iter_values(0..rows as i64)) as ArrayRef,
            ),
            (
                Arc::new(Field::new("label", DataType::Utf8, true)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("p{i}")),
                )) as ArrayRef,
            ),
        ]));
        RecordBatch::try_from_iter([
            ("id", ids),
            ("name", names),
            ("amount", amounts),
            ("tags", lists),
            ("point", point),
        ])
        .unwrap()
    }

    async fn write_all(
        batches: &[RecordBatch],
        rows_per_row_group: usize,
        lanes: usize,
    ) -> Vec<u8> {
        let schema = batches[0].schema();
        let mut writer = ParallelFileWriter::try_new(
            schema,
            WriterProperties::builder().build(),
            rows_per_row_group,
            lanes,
        )
        .unwrap();
        let mut bytes = Vec::new();
        for batch in batches {
            bytes.extend_from_slice(&writer.write(batch).await.unwrap());
        }
        bytes.extend_from_slice(&writer.finish().await.unwrap());
        bytes
    }

    fn read(bytes: Vec<u8>) -> (Vec<RecordBatch>, Vec<i64>) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes)).unwrap();
        let groups = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        let batches = builder.build().unwrap().map(Result::unwrap).collect();
        (batches, groups)
    }

    #[tokio::test]
    async fn the_file_reads_back_as_written_with_any_number_of_lanes() {
        let batches = vec![batch(0, 700), batch(700, 1), batch(701, 1300)];
        let schema = batches[0].schema();
        let expected = arrow::compute::concat_batches(&schema, &batches).unwrap();
        for lanes in [1, 2, 3, 8] {
            let (read, groups) = read(write_all(&batches, 500, lanes).await);
            assert_eq!(
                groups,
                vec![500, 500, 500, 500, 1],
                "{lanes} lanes: row groups"
            );
            let read = arrow::compute::concat_batches(&read[0].schema(), &read).unwrap();
            assert_eq!(read, expected, "{lanes} lanes");
        }
    }

    #[tokio::test]
    async fn the_bytes_are_those_of_arrow_s_own_writer() {
        let batches = vec![batch(0, 1000), batch(1000, 333)];
        let properties = || {
            WriterProperties::builder()
                .set_max_row_group_row_count(Some(400))
                .build()
        };
        let mut plain =
            ArrowWriter::try_new(Vec::new(), batches[0].schema(), Some(properties())).unwrap();
        for batch in &batches {
            plain.write(batch).unwrap();
        }
        let plain = plain.into_inner().unwrap();
        let ours = write_all(&batches, 400, 3).await;
        assert_eq!(ours, plain);
    }

    fn costs(millis: &[u64]) -> Vec<Duration> {
        millis.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    fn loads(costs: &[Duration], lanes: &[Vec<usize>]) -> Vec<Duration> {
        lanes
            .iter()
            .map(|fields| fields.iter().map(|&f| costs[f]).sum())
            .collect()
    }

    #[test]
    fn untimed_fields_are_dealt_round_robin() {
        let lanes = deal_by_cost(&costs(&[0; 7]), 3);
        assert_eq!(lanes, vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
        assert_eq!(deal_by_cost(&costs(&[0; 2]), 1), vec![vec![0, 1]]);
    }

    #[test]
    fn the_costly_fields_round_robin_put_together_are_split() {
        // Lineitem's shape: the three high-entropy columns sit at odd places.
        let millis = [5, 40, 5, 2, 3, 40, 2, 2, 1, 1, 3, 3, 3, 2, 2, 90];
        let lanes = deal_by_cost(&costs(&millis), 2);
        let load = loads(&costs(&millis), &lanes);
        assert_eq!(load.iter().sum::<Duration>(), Duration::from_millis(204));
        assert_eq!(load, vec![Duration::from_millis(102); 2], "{lanes:?}");
        assert!(lanes[0].contains(&15) && lanes[1].contains(&1) && lanes[1].contains(&5));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::fuzz_cases(256, 1)))]

        /// Every field on exactly one lane, in schema order, and the slowest lane within one
        /// field's cost of an even share (what dealing heaviest-first guarantees).
        #[test]
        fn fields_are_dealt_once_and_evenly(
            millis in proptest::collection::vec(0u64..1_000, 1..40),
            lanes in 1usize..9,
        ) {
            let costs = costs(&millis);
            let dealt = deal_by_cost(&costs, lanes);
            proptest::prop_assert_eq!(dealt.len(), lanes);
            let mut all: Vec<usize> = dealt.concat();
            for fields in &dealt {
                proptest::prop_assert!(fields.is_sorted());
            }
            all.sort_unstable();
            proptest::prop_assert_eq!(all, (0..costs.len()).collect::<Vec<_>>());
            let total: Duration = costs.iter().sum();
            let heaviest = costs.iter().max().copied().unwrap_or_default();
            let slowest = loads(&costs, &dealt).into_iter().max().unwrap_or_default();
            proptest::prop_assert!(slowest <= total / lanes as u32 + heaviest);
        }
    }

    #[tokio::test]
    async fn a_costly_field_gets_a_lane_of_its_own_after_the_first_row_group() {
        // Field 1 is long random text, the others small integers: round-robin puts field 3 with
        // it; timed, it is dealt alone.
        let rows = 2_000;
        let mut seed = 7u64;
        let text: ArrayRef = Arc::new(StringArray::from_iter_values((0..rows).map(|_| {
            (0..2_000)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    char::from(b'a' + (seed >> 60) as u8)
                })
                .collect::<String>()
        })));
        let small = || Arc::new(Int64Array::from_iter_values(0..rows as i64)) as ArrayRef;
        let batch = RecordBatch::try_from_iter([
            ("a", small()),
            ("text", text),
            ("b", small()),
            ("c", small()),
        ])
        .unwrap();
        let mut writer = ParallelFileWriter::try_new(
            batch.schema(),
            WriterProperties::builder().build(),
            rows,
            2,
        )
        .unwrap();
        assert_eq!(writer.fields_of_lane, vec![vec![0, 2], vec![1, 3]]);
        let mut bytes = writer.write(&batch).await.unwrap().to_vec();
        assert_eq!(writer.fields_of_lane, vec![vec![1], vec![0, 2, 3]]);
        bytes.extend_from_slice(&writer.finish().await.unwrap());
        let (read, _) = read(bytes);
        assert_eq!(read.iter().map(|b| b.num_rows()).sum::<usize>(), rows);
    }

    #[tokio::test]
    async fn an_empty_file_has_a_schema_and_no_rows() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let writer =
            ParallelFileWriter::try_new(schema, WriterProperties::builder().build(), 10, 2)
                .unwrap();
        let bytes = writer.finish().await.unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        assert_eq!(builder.metadata().file_metadata().num_rows(), 0);
        assert_eq!(builder.schema().field(0).name(), "id");
    }
}
