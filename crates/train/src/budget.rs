//! Fitting a run into a wall-clock budget (`train --max-time`).

/// Fits a run into a wall-clock budget. The step count is fixed once, at the
/// end of the warmup (at least 3 steps in), from the pace of the steps
/// after the first (which carries one-off costs such as CUDA kernel
/// compilation): as many steps as fit in what is left, at most the planned
/// number. Until then the warmup's learning rate does not depend on the
/// count, so the same run replayed with `--max-steps` set to the count it
/// reached follows the same schedule. Otherwise it only ends a run early:
/// when the next step, at the mean pace or the last step's, would pass the
/// budget.
#[derive(Debug, Clone)]
pub struct TimeBudget {
    limit_s: f64,
    fix_after: usize,
    /// Steps of this invocation and the time they ended at.
    done: usize,
    first_step_end_s: f64,
    last_step_end_s: f64,
    fixed: bool,
}

impl TimeBudget {
    pub fn new(limit_s: f64, warmup_steps: usize) -> Self {
        Self {
            limit_s,
            fix_after: warmup_steps.max(3),
            done: 0,
            first_step_end_s: 0.0,
            last_step_end_s: 0.0,
            fixed: false,
        }
    }

    /// After a step of this invocation ended at `now_s` (seconds since the
    /// loop started), with `steps` taken in all (resumed ones included) and
    /// `total` planned: the new total.
    pub fn after_step(&mut self, steps: usize, total: usize, now_s: f64) -> usize {
        self.done += 1;
        if self.done == 1 {
            self.first_step_end_s = now_s;
        }
        let pace = if self.done > 1 {
            (now_s - self.first_step_end_s) / (self.done - 1) as f64
        } else {
            now_s
        };
        let last = now_s - self.last_step_end_s;
        self.last_step_end_s = now_s;
        if now_s + pace.max(last) > self.limit_s {
            return steps.min(total);
        }
        if !self.fixed && self.done >= self.fix_after {
            self.fixed = true;
            let fitting = steps + ((self.limit_s - now_s) / pace).floor() as usize;
            return fitting.clamp(steps, total);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::TimeBudget;

    /// Feeds step end times to a budget; returns the totals it set.
    fn run(budget: &mut TimeBudget, start_step: usize, total: usize, ends: &[f64]) -> Vec<usize> {
        let mut total = total;
        ends.iter()
            .enumerate()
            .map(|(i, &t)| {
                total = budget.after_step(start_step + i + 1, total, t);
                total
            })
            .collect()
    }

    #[test]
    fn time_budget_fixes_the_step_count_after_warmup() {
        // 60 s budget, warmup 4; the first step takes 10 s (compilation),
        // then 2 s each: at step 4 (16 s) 22 more fit → 26, then it holds.
        let mut b = TimeBudget::new(60.0, 4);
        let totals = run(&mut b, 0, 1000, &[10.0, 12.0, 14.0, 16.0, 18.0, 20.0]);
        assert_eq!(totals, vec![1000, 1000, 1000, 26, 26, 26]);
        // Never more than planned.
        let mut b = TimeBudget::new(60.0, 4);
        assert_eq!(
            run(&mut b, 0, 10, &[10.0, 12.0, 14.0, 16.0]),
            vec![10, 10, 10, 10]
        );
        // At least 3 steps are timed even without warmup.
        let mut b = TimeBudget::new(60.0, 0);
        assert_eq!(run(&mut b, 0, 1000, &[1.0, 2.0, 3.0]), vec![1000, 1000, 60]);
        // A resumed run counts its own steps and pace.
        let mut b = TimeBudget::new(60.0, 3);
        assert_eq!(
            run(&mut b, 100, 1000, &[5.0, 10.0, 15.0]),
            vec![1000, 1000, 112]
        );
    }

    #[test]
    fn time_budget_stops_a_run_that_slows_down() {
        let mut b = TimeBudget::new(60.0, 3);
        let mut totals = run(&mut b, 0, 1000, &[2.0, 4.0, 6.0]);
        assert_eq!(totals, vec![1000, 1000, 30]);
        // Steps of 20 s from here: the next one would end past 60 s.
        totals = run(&mut b, 3, 30, &[26.0, 46.0]);
        assert_eq!(totals, vec![30, 5]);
        // A budget spent before the count is fixed ends the run there.
        let mut b = TimeBudget::new(5.0, 3);
        assert_eq!(run(&mut b, 0, 1000, &[2.0, 4.0]), vec![1000, 2]);
    }
}
