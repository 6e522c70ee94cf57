//! The driver/coordinator example of "Task-based parallelism with Ray" (ray-task-parallelism-note.md),
//! ported: three remote tasks, local work while one runs, and a task that waits on another.

use std::time::Duration;

use rayfork::{Runtime, remote};

#[remote]
fn remote_task_1(data: i64) -> i64 {
    data + 1
}

#[remote]
fn remote_task_2(data: f64) -> f64 {
    // The reference sleeps 10 s; 1 s keeps the example quick and still shows the wait.
    std::thread::sleep(Duration::from_secs(1));
    data * 2.0
}

#[remote]
fn remote_task_3(data: i64) -> rayfork::Result<f64> {
    // This task cannot proceed until task 2 is ready: a nested task and a get inside a task.
    let result_task_2 = rayfork::get(&remote_task_2::remote(2.0))?;
    Ok(data as f64 + result_task_2)
}

fn main() -> rayfork::Result<()> {
    let rt = Runtime::builder().start()?;

    // Invoke a remote function: asynchronous, returns a ref at once.
    let obj_ref_1 = remote_task_1::remote(2);

    // Do work locally meanwhile.
    let mut counter = 0;
    for _ in 0..10 {
        counter += 1;
    }

    // Block for the first result and add it to the counter.
    let result_task_1 = rt.get(&obj_ref_1)?;
    counter += result_task_1;

    let final_answer_ref = remote_task_3::remote(counter);
    let final_answer = rt.get(&final_answer_ref)?;
    println!("Final answer is {final_answer}");
    assert_eq!(final_answer, 17.0);
    Ok(())
}
