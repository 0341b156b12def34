using Conveyor.Api.Backpressure;
using Conveyor.Api.Hosting;
using Conveyor.Contracts;
using Conveyor.Storage;
using Microsoft.AspNetCore.Http.HttpResults;
using System.Diagnostics;

namespace Conveyor.Api.Jobs;

/// <summary>The submission endpoints: <c>POST /api/jobs/{kind}</c> and <c>POST /api/jobs/{kind}/batch</c>.</summary>
internal static partial class JobsApi
{
    /// <summary>Jobs of one batch being submitted at once (and so, at most, database connections it holds).</summary>
    private const int MaxJobsInFlightPerBatch = 25;

    /// <summary>What both submission endpoints are given (bound by <c>[AsParameters]</c>).</summary>
    internal readonly record struct Submission(
        string Kind,
        HttpContext Http,
        JobSubmitter Submitter,
        BackpressureGate Backpressure,
        SubmissionRateLimiter RateLimiter,
        SubmissionMetrics Metrics,
        TimeProvider Clock,
        WebhookUrlRules WebhookUrls,
        CancellationToken CancellationToken);

    internal static async Task<Results<Accepted<JobAccepted>, ValidationProblem, ProblemHttpResult>> SubmitJob(
        [AsParameters] Submission submission)
    {
        var (kind, http, submitter, backpressure, _, _, clock, webhookUrls, cancellationToken) = submission;
        var (body, _, refused) = await ReadAsync(submission, MaxBodyBytes);
        if (refused is not null)
        {
            return refused;
        }

        var errors = new FieldErrors();
        var idempotencyKey = IdempotencyKey.Read(http.Request.Headers, errors);
        var job = JobRequestParser.Parse(kind, body, errors, clock.GetUtcNow(), webhookUrls, deferRunAtWindow: true);
        if (job is null || errors.Count > 0)
        {
            return TypedResults.ValidationProblem(errors.ToDictionary());
        }

        // Checked before the row is written, for a job that runs now or soon. A repeat of a job accepted
        // before (its answer lost, typically, under this very pressure) still gets that job when answering
        // it publishes nothing.
        var pressure = Refused(kind, backpressure);
        if (IsGated(job, backpressure) && pressure is { } gated)
        {
            return await submitter.AnswerRepeatWithoutPublishAsync(job, idempotencyKey, body, cancellationToken) is { } repeat
                ? Answer(http, repeat)
                : RefuseAdmission(http, gated, backpressure);
        }

        // One scheduled for later passes no gate, but may repeat a job whose answer would publish: that waits as well.
        var result = await submitter.SubmitAsync(job, idempotencyKey, body, publishRepeats: pressure is null, cancellationToken);
        return result.Status == SubmitStatus.WouldPublish && pressure is { } held
            ? RefuseAdmission(http, held, backpressure)
            : Answer(http, result);
    }

    /// <summary>The answer to a single submission: its job (202), or why it was not accepted.</summary>
    private static Results<Accepted<JobAccepted>, ValidationProblem, ProblemHttpResult> Answer(HttpContext http, SubmitResult result)
    {
        if (result.Status == SubmitStatus.RunAtOutsideWindow)
        {
            return TypedResults.ValidationProblem(new Dictionary<string, string[]> { [JobRequestParser.RunAtField] = [JobRequestParser.RunAtWindowError] });
        }

        if (RefusalOf(result) is { } refusal)
        {
            var problem = Problem(refusal.Status, refusal.Title, refusal.Detail);
            return refusal.RetryAfterSeconds is { } seconds ? RetryAfterResponses.RetryLater(http, seconds, problem) : problem;
        }

        var row = result.Job!;
        return TypedResults.Accepted($"/api/jobs/{row.Id}", new JobAccepted(row.Id, row.Kind, row.Status));
    }

    /// <summary>
    /// Submits up to <see cref="MaxBatchJobs"/> jobs of one kind in one request: each is recorded and
    /// published exactly as by <see cref="SubmitJob"/> (same rules, same idempotency), their rows go to
    /// the database together and their publishes are confirmed together. One bad job refuses the whole
    /// batch (400), a new job whose <c>runAt</c> is past or too far ahead too (<see cref="RunAtErrorsAsync"/>), before
    /// any other refusal once read. Each job takes one permit of the client's rate limit; a refused batch takes one.
    /// </summary>
    internal static async Task<Results<Accepted<JobBatchAccepted>, ValidationProblem, ProblemHttpResult>> SubmitBatch(
        [AsParameters] Submission submission)
    {
        var (kind, http, submitter, backpressure, rateLimiter, _, clock, webhookUrls, cancellationToken) = submission;
        var (body, permits, refused) = await ReadAsync(submission, MaxBatchBodyBytes);
        if (refused is not null)
        {
            return refused;
        }

        // Refused from here on, the batch pays the permit it took to be read; accepted, one per job.
        var errors = new FieldErrors();
        var batchKey = IdempotencyKey.Read(http.Request.Headers, errors, IdempotencyKey.MaxBatchLength);
        var maxJobs = Math.Min(MaxBatchJobs, rateLimiter.Burst);
        var items = JobBatchParser.Parse(kind, body, errors, clock.GetUtcNow(), webhookUrls, maxJobs, MaxBodyBytes);
        if (items is null || errors.Count > 0)
        {
            return TypedResults.ValidationProblem(errors.ToDictionary());
        }

        // Every database query the batch makes is paid for whatever it ends as: its first lookups (here, or for the
        // backpressure gate) on the permit it took to be read, its jobs one by one below once all of its permits are
        // taken. The one taken first counts towards all, and is the one permit of a batch refused.
        permits.Need(items.Count);
        if (items.Any(item => item.Request.RunAtOutsideWindow) && (await RunAtErrorsAsync(submission, items, batchKey, errors)).Count > 0)
        {
            return TypedResults.ValidationProblem(errors.ToDictionary());
        }

        // Checked first among the refusals of a valid batch: it needs no I/O. A batch the queue cannot take now
        // spends one permit, not all of its own: it was read and parsed, so resending it is not free, yet following
        // Retry-After through a long refusal costs little of the client's allowance. A batch sent again whose every
        // job was accepted before still gets its answers when they publish nothing (RepeatedBatchAsync).
        var pressure = Refused(kind, backpressure);
        if (items.Any(item => IsGated(item.Request, backpressure)) && pressure is { } gated)
        {
            return await RepeatedBatchAsync(submission, items, batchKey, permits) is { } repeats
                ? AnswerBatch(submission, repeats)
                : RefuseAdmission(http, gated, backpressure);
        }

        // All of the batch's permits, or, when there are fewer, one in all (it was read): its Retry-After is the time
        // until there are that many.
        if (!permits.TryTakeAll(out var wait))
        {
            return TooManyRequests(http, wait);
        }

        // Submitted side by side: the rows meet in the same group commits, the publishes' confirms
        // overlap. Bounded, since a job submitted before reads its row on a connection of its own: a
        // batch sent again must not take the whole connection pool.
        var results = new SubmitResult[items.Count];
        await Parallel.ForEachAsync(
            Enumerable.Range(0, items.Count),
            new ParallelOptions { MaxDegreeOfParallelism = MaxJobsInFlightPerBatch, CancellationToken = cancellationToken },
            async (index, token) =>
            {
                try
                {
                    // Jobs scheduled for later pass no gate, but one may repeat a job whose answer would publish.
                    results[index] = await submitter.SubmitAsync(
                        items[index].Request, IdempotencyKey.ForBatchJob(batchKey, index), items[index].Body, publishRepeats: pressure is null, token);
                }
                catch (Exception exception) when (DatabaseFailures.IsUnavailable(exception) && !token.IsCancellationRequested)
                {
                    // This job's answer, not the whole batch's: the others keep theirs.
                    results[index] = new SubmitResult(SubmitStatus.DatabaseUnavailable);
                }
            });

        return AnswerBatch(submission, results, pressure);
    }

    /// <summary>
    /// Adds to <paramref name="errors"/> the <c>runAt</c> of each job whose time is past or too far ahead and that
    /// is not a repeat of a job accepted before (the same batch sent again after its time came): a new job cannot
    /// have that time, and the whole batch is refused as for any bad job. Checked before the backpressure gate and
    /// the rest of the batch's permits, as the parser's errors are: the client must fix the batch whatever the queue's
    /// depth or its allowance, and a batch refused as invalid pays one permit, not one per job, however many jobs were
    /// looked up. They are looked up at once (<see cref="JobSubmitter.UnsubmittedAsync"/>), one lookup on the batch's
    /// first permit, taken before its body was read, as a batch refused by the gate looks up its first job
    /// (<see cref="RepeatedBatchAsync"/>).
    /// </summary>
    private static async Task<FieldErrors> RunAtErrorsAsync(
        Submission submission, IReadOnlyList<JobBatchItem> items, string? batchKey, FieldErrors errors)
    {
        var outside = items.Index().Where(x => x.Item.Request.RunAtOutsideWindow).ToList();
        if (outside.Count == 0)
        {
            return errors;
        }

        var unsubmitted = await submission.Submitter.UnsubmittedAsync(
            submission.Kind,
            [.. outside.Select(x => (x.Item.Request.BusinessKey, IdempotencyKey.ForBatchJob(batchKey, x.Index)))],
            submission.CancellationToken);
        foreach (var position in unsubmitted)
        {
            errors.Add($"{JobBatchParser.JobsField}[{outside[position].Index}].{JobRequestParser.RunAtField}", JobRequestParser.RunAtWindowError);
        }

        return errors;
    }

    /// <summary>
    /// The results of a batch the backpressure gate refused, when it is one sent again whose every job is
    /// answered without a publish (<see cref="JobSubmitter.AnswerRepeatWithoutPublishAsync"/>); null when
    /// it is refused. Its first job is looked up on the one permit a refused batch pays, taken before its body
    /// was read, so a batch of new jobs costs one permit and one lookup. The others are paid for as
    /// the jobs of an accepted batch, all of its permits at once; lacking them, the batch is refused.
    /// </summary>
    private static async Task<SubmitResult[]?> RepeatedBatchAsync(
        Submission submission, IReadOnlyList<JobBatchItem> items, string? batchKey, SubmissionRateLimiter.RequestPermits permits)
    {
        var (_, _, submitter, _, _, _, _, _, cancellationToken) = submission;
        var results = new SubmitResult[items.Count];
        var repeated = await submitter.AnswerRepeatWithoutPublishAsync(
            items[0].Request, IdempotencyKey.ForBatchJob(batchKey, 0), items[0].Body, cancellationToken);
        if (repeated is not { } first || !permits.TryTakeAll(out _))
        {
            return null;
        }

        results[0] = first;
        var allRepeated = true;
        await Parallel.ForEachAsync(
            Enumerable.Range(1, items.Count - 1),
            new ParallelOptions { MaxDegreeOfParallelism = MaxJobsInFlightPerBatch, CancellationToken = cancellationToken },
            async (index, token) =>
            {
                if (!Volatile.Read(ref allRepeated))
                {
                    return;
                }

                if (await submitter.AnswerRepeatWithoutPublishAsync(
                    items[index].Request, IdempotencyKey.ForBatchJob(batchKey, index), items[index].Body, token) is { } result)
                {
                    results[index] = result;
                }
                else
                {
                    Volatile.Write(ref allRepeated, false);
                }
            });
        return allRepeated ? results : null;
    }

    /// <summary>
    /// The answer to a batch: every job's (202), or, when any was not accepted, the most severe refusal with each job's answer;
    /// <paramref name="pressure"/> is why the gate refused the kind, for the jobs that would have published a repeat.
    /// </summary>
    private static Results<Accepted<JobBatchAccepted>, ValidationProblem, ProblemHttpResult> AnswerBatch(
        Submission submission, SubmitResult[] results, AdmissionDecision? pressure = null)
    {
        var (kind, http, _, _, _, _, _, _, _) = submission;
        var answers = new JobBatchResult[results.Length];
        Refusal? worst = null;
        for (var index = 0; index < results.Length; index++)
        {
            if ((results[index].Status == SubmitStatus.WouldPublish && pressure is { } held
                ? GateRefusal(held, submission.Backpressure)
                : RefusalOf(results[index])) is { } refusal)
            {
                answers[index] = new JobBatchResult(index, Error: new JobBatchError(refusal.Status, refusal.Title, refusal.Detail));
                worst = worst is { } before && before.Severity >= refusal.Severity ? before : refusal;
                continue;
            }

            var row = results[index].Job!;
            answers[index] = new JobBatchResult(index, row.Id, row.Kind, row.Status);
        }

        submission.Metrics.Batch(kind, answers.Length, worst is null ? "accepted" : "partial");
        if (worst is not { } answer)
        {
            return TypedResults.Accepted((string?)null, new JobBatchAccepted(answers));
        }

        var accepted = answers.Count(a => a.Error is null);
        var problem = TypedResults.Problem(
            statusCode: answer.Status,
            title: answers.Length - accepted == 1 ? answer.Title : "Some jobs of the batch were not accepted",
            detail: $"{accepted} of {answers.Length} jobs were accepted; the answer of each is in 'jobs'. "
                + "Sending the same batch again is safe: a job accepted before is answered again, not submitted twice.",
            extensions: new Dictionary<string, object?>(StringComparer.Ordinal) { [JobBatchParser.JobsField] = answers });
        return answer.RetryAfterSeconds is { } seconds ? RetryAfterResponses.RetryLater(http, seconds, problem) : problem;
    }

    /// <summary>
    /// The body, once the request passed the checks that need no parsing: the client's rate limit (429), a known
    /// kind (404), JSON (415), at most <paramref name="maxBodyBytes"/> (413). A permit is taken before anything is
    /// read, a single submission's one, a batch's first (it takes the rest once its size is known): so a client
    /// has at most as many bodies read at once as its bucket holds permits, where a batch let in on a permit merely
    /// there had any number read side by side, up to 1 MiB each, before one of them took it. A request refused
    /// here has paid that permit, as any refused submission does.
    /// </summary>
    private static async Task<(byte[] Body, SubmissionRateLimiter.RequestPermits Permits, ProblemHttpResult? Refused)> ReadAsync(
        Submission submission, int maxBodyBytes)
    {
        var http = submission.Http;
        var permits = submission.RateLimiter.ForRequest(http);
        if (!permits.TryTakeOne(out var wait))
        {
            return ([], permits, TooManyRequests(http, wait));
        }

        if (RefuseRequest(submission.Kind, http.Request, maxBodyBytes) is { } refused)
        {
            return ([], permits, refused);
        }

        var body = await RequestBody.ReadAtMostAsync(http.Request.Body, http.Request.ContentLength, maxBodyBytes, submission.CancellationToken);
        return body is null ? ([], permits, BodyTooLarge(maxBodyBytes)) : (body, permits, null);
    }

    /// <summary>A refusal of the request before its body is parsed: unknown kind (404), wrong media type (415), too large (413).</summary>
    private static ProblemHttpResult? RefuseRequest(string kind, HttpRequest request, int maxBodyBytes)
    {
        if (!JobRequestParser.IsKnownKind(kind))
        {
            return Problem(StatusCodes.Status404NotFound, "Unknown job kind",
                $"'{kind}' is not a job kind. Known kinds: {string.Join(", ", JobKinds.All)}.");
        }

        if (RequestBody.UnsupportedMedia(request, "the job") is { } unsupported)
        {
            return Problem(StatusCodes.Status415UnsupportedMediaType, "Unsupported media type", unsupported);
        }

        return request.ContentLength > maxBodyBytes ? BodyTooLarge(maxBodyBytes) : null;
    }

    /// <summary>
    /// Whether <paramref name="job"/> waits for the queue's depth and the broker's alarms: it runs now or soon.
    /// Not a <c>runAt</c> outside its window: that is a repeat answered with its job, or refused.
    /// </summary>
    private static bool IsGated(JobRequest job, BackpressureGate backpressure) =>
        !job.RunAtOutsideWindow && backpressure.Gates(job.RunAt);

    /// <summary>Why a job of <paramref name="kind"/> may not be queued now; null when it may.</summary>
    private static AdmissionDecision? Refused(string kind, BackpressureGate backpressure) =>
        backpressure.Check(kind) is { Admission: not Admission.Admitted } refused ? refused : null;

    /// <summary>
    /// 429 while the kind's queue is full, 503 while the broker blocks publishers; <paramref name="advice"/> follows the
    /// gate's reason in the detail.
    /// </summary>
    private static ProblemHttpResult RefuseAdmission(
        HttpContext http, AdmissionDecision refused, BackpressureGate backpressure,
        string advice = GateAdvice)
    {
        var refusal = GateRefusal(refused, backpressure, advice);
        return RetryAfterResponses.RetryLater(http, backpressure.RetryAfterSeconds, Problem(refusal.Status, refusal.Title, refusal.Detail));
    }

    /// <summary>What a submission the gate refused is told to do.</summary>
    private const string GateAdvice = "Retry later; the same Idempotency-Key may be reused.";

    /// <summary>The gate's refusal as a <see cref="Refusal"/>: a retry settles it, as it does a broker outage.</summary>
    private static Refusal GateRefusal(
        AdmissionDecision refused, BackpressureGate backpressure, string advice = GateAdvice) =>
        refused.Admission == Admission.QueueFull
            ? new Refusal(StatusCodes.Status429TooManyRequests, "Job queue full", $"{refused.Detail} {advice}", backpressure.RetryAfterSeconds, 2)
            : new Refusal(StatusCodes.Status503ServiceUnavailable, "Message broker blocking publishers", $"{refused.Detail} {advice}", backpressure.RetryAfterSeconds, 2);

    private static ProblemHttpResult TooManyRequests(HttpContext http, TimeSpan wait) =>
        RetryAfterResponses.TooManyRequests(http, wait, "sends jobs");

    /// <summary>Why a submission was not accepted, as its problem; <see cref="Severity"/> orders a batch's refusals.</summary>
    private readonly record struct Refusal(int Status, string Title, string Detail, int? RetryAfterSeconds, int Severity);

    /// <summary>
    /// Null for an accepted submission. For a batch, the most severe refusal is the answer's status: a
    /// reused key (422) needs the client to change something, a broker outage (503) or a submission in
    /// progress (409) only a retry.
    /// </summary>
    private static Refusal? RefusalOf(SubmitResult result) => result.Status switch
    {
        SubmitStatus.Created or SubmitStatus.Duplicate when result.Job is not null => null,
        SubmitStatus.KeyReused => new Refusal(StatusCodes.Status422UnprocessableEntity, "Idempotency-Key reused",
            "This Idempotency-Key was already used for a different request. Use a new key for a new job.", null, 3),
        SubmitStatus.ContentConflict when result.Job is { } existing => new Refusal(StatusCodes.Status422UnprocessableEntity, "Business id reused",
            $"{JobRequestParser.BusinessIdField(existing.Kind)}: {existing.BusinessKey} names job {existing.Id}, submitted with other content. " +
            $"A new job needs a new {JobRequestParser.BusinessIdField(existing.Kind)}; the same content again gets that job.", null, 3),
        SubmitStatus.PublishFailed => new Refusal(StatusCodes.Status503ServiceUnavailable, "Message broker unavailable",
            "The job could not be queued. Retry later; the same Idempotency-Key may be reused.", RetryAfterSeconds, 2),
        SubmitStatus.DatabaseUnavailable => new Refusal(StatusCodes.Status503ServiceUnavailable, "Database unavailable",
            "The database cannot be reached right now. Retry later; sending the same job again is safe.", ErrorHandling.DatabaseRetryAfterSeconds, 2),
        SubmitStatus.InFlight => new Refusal(StatusCodes.Status409Conflict, "Submission in progress",
            "Another request for the same job is being processed. Retry shortly.", 1, 1),
        // A batch's job whose earlier submission was there when the batch was checked, and gone since.
        SubmitStatus.RunAtOutsideWindow => new Refusal(StatusCodes.Status400BadRequest, "Invalid runAt",
            $"{JobRequestParser.RunAtField}: {JobRequestParser.RunAtWindowError}", null, 3),
        _ => throw new UnreachableException($"Submission ended {result.Status} without a job."),
    };

    private static ProblemHttpResult BodyTooLarge(int maxBodyBytes) =>
        Problem(StatusCodes.Status413PayloadTooLarge, "Request body too large",
            $"The body must be at most {maxBodyBytes} bytes.");
}
