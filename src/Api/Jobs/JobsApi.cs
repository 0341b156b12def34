using Conveyor.Api.Backpressure;
using Conveyor.Api.Hosting;
using Conveyor.Api.Security;
using Conveyor.Contracts;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace Conveyor.Api.Jobs;

/// <summary>
/// <c>POST /api/jobs/{kind}</c> submits a job (now or at <c>runAt</c>), <c>POST /api/jobs/{kind}/batch</c>
/// up to 100 of them; <c>GET /api/jobs/{jobId}</c> shows one; <c>GET /api/jobs</c> lists jobs;
/// <c>DELETE /api/jobs/{jobId}</c> cancels one not yet started.
/// </summary>
internal static class JobsApi
{
    public const int MaxBodyBytes = 256 * 1024;

    /// <summary>The most jobs one batch may hold (fewer when the client's rate-limit burst is smaller).</summary>
    public const int MaxBatchJobs = 100;

    /// <summary>The largest batch body: room for many jobs, not for <see cref="MaxBatchJobs"/> of the largest.</summary>
    public const int MaxBatchBodyBytes = 1024 * 1024;

    /// <summary>Seconds a client should wait before retrying a submission the broker did not confirm.</summary>
    public const int RetryAfterSeconds = 5;

    /// <summary>The longest <c>GET /api/jobs/{jobId}?waitSeconds=</c> holds an answer: below common proxy and client timeouts.</summary>
    public const int MaxWaitSeconds = 30;

    public static IServiceCollection AddJobs(this IServiceCollection services)
    {
        services.AddSingleton(TimeProvider.System);
        services.AddSingleton<JobRows>();
        services.AddSingleton<SubmissionMetrics>();
        services.AddOptions<WebhookUrlOptions>().BindConfiguration(WebhookUrlOptions.SectionName);
        services.AddScoped<JobSubmitter>();
        services.AddScoped<JobCanceller>();
        services.AddOptions<StrandedJobsOptions>().BindConfiguration(StrandedJobsOptions.SectionName).ValidateDataAnnotations().ValidateOnStart();
        services.AddSingleton<IValidateOptions<StrandedJobsOptions>, StrandedJobsOptionsValidator>();
        services.AddSingleton<StrandedJobRepublisher>();
        services.AddSingleton<StrandedJobsMonitor>();
        services.AddHostedService(provider => provider.GetRequiredService<StrandedJobsMonitor>());
        // First in the chain: the answers of these endpoints use the generated code, anything else
        // falls through to the reflection-based resolver.
        services.ConfigureHttpJsonOptions(json => json.SerializerOptions.TypeInfoResolverChain.Insert(0, JobsJson.Default));
        return services;
    }

    public static IEndpointRouteBuilder MapJobsApi(this IEndpointRouteBuilder endpoints)
    {
        var jobs = endpoints.MapGroup("/api/jobs")
            .WithTags("Jobs")
            .ProducesProblem(StatusCodes.Status401Unauthorized)
            .ProducesProblem(StatusCodes.Status403Forbidden);

        jobs.MapPost("/{kind}", SubmitJob)
            .WithName("SubmitJob")
            .RequireAuthorization(ApiPolicies.JobsPublish)
            .WithSummary("Submit a job: charge-payment, deliver-webhook or generate-report; optional runAt schedules it.")
            .Accepts<JsonElement>("application/json")
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblem(StatusCodes.Status409Conflict)
            .ProducesProblem(StatusCodes.Status413PayloadTooLarge)
            .ProducesProblem(StatusCodes.Status415UnsupportedMediaType)
            .ProducesProblem(StatusCodes.Status422UnprocessableEntity)
            .ProducesProblem(StatusCodes.Status429TooManyRequests)
            .ProducesProblem(StatusCodes.Status503ServiceUnavailable);

        jobs.MapPost("/{kind}/batch", SubmitBatch)
            .WithName("SubmitJobBatch")
            .RequireAuthorization(ApiPolicies.JobsPublish)
            .WithSummary("Submit 1 to 100 jobs of one kind: { jobs: [ … ] }, each as SubmitJob takes it; accepted or refused whole when invalid.")
            .Accepts<JsonElement>("application/json")
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblem(StatusCodes.Status409Conflict)
            .ProducesProblem(StatusCodes.Status413PayloadTooLarge)
            .ProducesProblem(StatusCodes.Status415UnsupportedMediaType)
            .ProducesProblem(StatusCodes.Status422UnprocessableEntity)
            .ProducesProblem(StatusCodes.Status429TooManyRequests)
            .ProducesProblem(StatusCodes.Status503ServiceUnavailable);

        jobs.MapGet("", ListJobs)
            .WithName("ListJobs")
            .RequireAuthorization(ApiPolicies.JobsRead)
            .WithSummary("Jobs, newest first, optionally of one status and kind (and, with the kind, one business key); page on with nextCursor.");

        jobs.MapGet("/{jobId}", GetJob)
            .WithName("GetJob")
            .RequireAuthorization(ApiPolicies.JobsRead)
            .WithSummary("The status of a job; with waitSeconds, answers once the job has ended or that long has passed.");

        jobs.MapDelete("/{jobId}", CancelJob)
            .WithName("CancelJob")
            .RequireAuthorization(ApiPolicies.JobsPublish)
            .WithSummary("Cancel a queued or scheduled job.");

        return endpoints;
    }

    internal static async Task<Results<Accepted<JobAccepted>, ValidationProblem, ProblemHttpResult>> SubmitJob(
        string kind,
        HttpContext http,
        JobSubmitter submitter,
        BackpressureGate backpressure,
        SubmissionRateLimiter rateLimiter,
        TimeProvider clock,
        IOptions<WebhookUrlOptions> webhookUrls,
        CancellationToken cancellationToken)
    {
        if (!rateLimiter.TryAcquire(http, 1, out var wait))
        {
            return TooManyRequests(http, wait);
        }

        var request = http.Request;
        if (RefuseRequest(kind, request, MaxBodyBytes) is { } refused)
        {
            return refused;
        }

        var errors = new FieldErrors();
        var idempotencyKey = IdempotencyKey.Read(request.Headers, errors);

        var body = await RequestBody.ReadAtMostAsync(request.Body, request.ContentLength, MaxBodyBytes, cancellationToken);
        if (body is null)
        {
            return BodyTooLarge(MaxBodyBytes);
        }

        var job = JobRequestParser.Parse(kind, body, errors, clock.GetUtcNow(), webhookUrls.Value.AllowPrivateNetworks);
        if (job is null || errors.Count > 0)
        {
            return TypedResults.ValidationProblem(errors.ToDictionary());
        }

        // Checked before the row is written. A scheduled job publishes nothing now, so neither the
        // queue's depth nor a broker alarm concerns it.
        if (job.RunAt is null && RefuseAdmission(kind, http, backpressure) is { } full)
        {
            return full;
        }

        var result = await submitter.SubmitAsync(job, idempotencyKey, body, cancellationToken);
        if (RefusalOf(result) is { } refusal)
        {
            if (refusal.RetryAfterSeconds is { } seconds)
            {
                http.Response.Headers.RetryAfter = seconds.ToString(CultureInfo.InvariantCulture);
            }

            return Problem(refusal.Status, refusal.Title, refusal.Detail);
        }

        var row = result.Job!;
        return TypedResults.Accepted($"/api/jobs/{row.Id}", new JobAccepted(row.Id, row.Kind, row.Status));
    }

    /// <summary>
    /// Submits up to <see cref="MaxBatchJobs"/> jobs of one kind in one request: each is recorded and
    /// published exactly as by <see cref="SubmitJob"/> (same rules, same idempotency), their rows go to
    /// the database together and their publishes are confirmed together. One bad job refuses the whole
    /// batch (400). Each job takes one permit of the client's rate limit.
    /// </summary>
    internal static async Task<Results<Accepted<JobBatchAccepted>, ValidationProblem, ProblemHttpResult>> SubmitBatch(
        string kind,
        HttpContext http,
        JobSubmitter submitter,
        BackpressureGate backpressure,
        SubmissionRateLimiter rateLimiter,
        TimeProvider clock,
        IOptions<WebhookUrlOptions> webhookUrls,
        CancellationToken cancellationToken)
    {
        // One permit now, so a flood of batches is refused before they are read; the rest once the
        // batch's size is known.
        if (!rateLimiter.TryAcquire(http, 1, out var wait))
        {
            return TooManyRequests(http, wait);
        }

        var request = http.Request;
        if (RefuseRequest(kind, request, MaxBatchBodyBytes) is { } refused)
        {
            return refused;
        }

        var errors = new FieldErrors();
        var batchKey = IdempotencyKey.Read(request.Headers, errors, IdempotencyKey.MaxBatchLength);

        var body = await RequestBody.ReadAtMostAsync(request.Body, request.ContentLength, MaxBatchBodyBytes, cancellationToken);
        if (body is null)
        {
            return BodyTooLarge(MaxBatchBodyBytes);
        }

        var maxJobs = Math.Min(MaxBatchJobs, rateLimiter.Burst);
        var items = JobBatchParser.Parse(kind, body, errors, clock.GetUtcNow(), webhookUrls.Value.AllowPrivateNetworks, maxJobs, MaxBodyBytes);
        if (items is null || errors.Count > 0)
        {
            return TypedResults.ValidationProblem(errors.ToDictionary());
        }

        if (items.Count > 1 && !rateLimiter.TryAcquire(http, items.Count - 1, out wait))
        {
            return TooManyRequests(http, wait);
        }

        if (items.Any(item => item.Request.RunAt is null) && RefuseAdmission(kind, http, backpressure) is { } full)
        {
            return full;
        }

        // Submitted side by side: the rows meet in the same group commits, the publishes' confirms overlap.
        var results = await Task.WhenAll(items.Select((item, index) =>
            submitter.SubmitAsync(item.Request, IdempotencyKey.ForBatchJob(batchKey, index), item.Body, cancellationToken)));

        var answers = new JobBatchResult[results.Length];
        Refusal? worst = null;
        for (var index = 0; index < results.Length; index++)
        {
            if (RefusalOf(results[index]) is { } refusal)
            {
                answers[index] = new JobBatchResult(index, Error: new JobBatchError(refusal.Status, refusal.Title, refusal.Detail));
                worst = worst is { } before && before.Severity >= refusal.Severity ? before : refusal;
                continue;
            }

            var row = results[index].Job!;
            answers[index] = new JobBatchResult(index, row.Id, row.Kind, row.Status);
        }

        if (worst is not { } answer)
        {
            return TypedResults.Accepted((string?)null, new JobBatchAccepted(answers));
        }

        if (answer.RetryAfterSeconds is { } seconds)
        {
            http.Response.Headers.RetryAfter = seconds.ToString(CultureInfo.InvariantCulture);
        }

        var accepted = answers.Count(a => a.Error is null);
        return TypedResults.Problem(
            statusCode: answer.Status,
            title: answers.Length - accepted == 1 ? answer.Title : "Some jobs of the batch were not accepted",
            detail: $"{accepted} of {answers.Length} jobs were accepted; the answer of each is in 'jobs'. "
                + "Sending the same batch again is safe: a job accepted before is answered again, not submitted twice.",
            extensions: new Dictionary<string, object?>(StringComparer.Ordinal) { [JobBatchParser.JobsField] = answers });
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

    /// <summary>429 while the kind's queue is full, 503 while the broker blocks publishers; null when a job may be queued.</summary>
    private static ProblemHttpResult? RefuseAdmission(string kind, HttpContext http, BackpressureGate backpressure)
    {
        if (backpressure.Check(kind) is not { Admission: not Admission.Admitted } refused)
        {
            return null;
        }

        http.Response.Headers.RetryAfter = backpressure.RetryAfterSeconds.ToString(CultureInfo.InvariantCulture);
        return refused.Admission == Admission.QueueFull
            ? Problem(StatusCodes.Status429TooManyRequests, "Job queue full",
                $"{refused.Detail} Retry later; the same Idempotency-Key may be reused.")
            : Problem(StatusCodes.Status503ServiceUnavailable, "Message broker blocking publishers",
                $"{refused.Detail} Retry later; the same Idempotency-Key may be reused.");
    }

    private static ProblemHttpResult TooManyRequests(HttpContext http, TimeSpan wait)
    {
        var seconds = Math.Max(1, (int)Math.Ceiling(wait.TotalSeconds));
        http.Response.Headers.RetryAfter = seconds.ToString(CultureInfo.InvariantCulture);
        return Problem(StatusCodes.Status429TooManyRequests, "Too many requests",
            $"This client sends jobs faster than it may. Retry after {seconds} s.");
    }

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
        SubmitStatus.PublishFailed => new Refusal(StatusCodes.Status503ServiceUnavailable, "Message broker unavailable",
            "The job could not be queued. Retry later; the same Idempotency-Key may be reused.", RetryAfterSeconds, 2),
        SubmitStatus.InFlight => new Refusal(StatusCodes.Status409Conflict, "Submission in progress",
            "Another request for the same job is being processed. Retry shortly.", 1, 1),
        _ => throw new UnreachableException($"Submission ended {result.Status} without a job."),
    };

    /// <param name="waitSeconds">
    /// 0 to <see cref="MaxWaitSeconds"/> (default 0): how long to hold the answer while the job has not
    /// ended (succeeded, dead-lettered or cancelled). The row is read again at growing intervals (0.1 s
    /// doubling up to 1 s), so a waiting client costs at most about one query a second. A shutdown of
    /// the Api ends the wait at once, with the job as it is, so waiting clients do not hold it up.
    /// </param>
    internal static async Task<Results<Ok<JobDetails>, ValidationProblem, ProblemHttpResult>> GetJob(
        string jobId, string? waitSeconds, ConveyorDbContext db, TimeProvider clock, IHostApplicationLifetime lifetime,
        CancellationToken cancellationToken)
    {
        if (!RouteIds.TryParse(jobId, nameof(jobId), out var id, out var invalid))
        {
            return invalid;
        }

        if (!QueryIntegers.TryRead(waitSeconds, 0, 0, MaxWaitSeconds, out var wait))
        {
            return TypedResults.ValidationProblem(new Dictionary<string, string[]>
            {
                [nameof(waitSeconds)] = [$"Must be an integer from 0 to {MaxWaitSeconds}."],
            });
        }

        var deadline = clock.GetTimestamp() + (long)(wait * (double)clock.TimestampFrequency);
        var pause = TimeSpan.FromMilliseconds(100);
        using var waitEnds = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, lifetime.ApplicationStopping);
        while (true)
        {
            var job = await db.Jobs.AsNoTracking().WithoutRequestBody().FirstOrDefaultAsync(j => j.Id == id, cancellationToken);
            if (job is null)
            {
                return Problem(StatusCodes.Status404NotFound, "Job not found", $"There is no job {id}.");
            }

            var left = clock.GetElapsedTime(clock.GetTimestamp(), deadline);
            if (HasEnded(job.Status) || left <= TimeSpan.Zero || waitEnds.IsCancellationRequested)
            {
                return TypedResults.Ok(JobDetails.From(job));
            }

            try
            {
                await Task.Delay(pause < left ? pause : left, clock, waitEnds.Token);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                // The Api is stopping: read the row once more and answer.
            }

            pause = TimeSpan.FromTicks(Math.Min(pause.Ticks * 2, TimeSpan.TicksPerSecond));
        }
    }

    /// <summary>Statuses a job rests in until someone acts (a dead-lettered one may be moved back).</summary>
    private static bool HasEnded(string status) =>
        status is JobStatus.Succeeded or JobStatus.DeadLettered or JobStatus.Cancelled;

    internal static async Task<Results<Ok<JobPage>, ValidationProblem>> ListJobs(
        string? status, string? kind, string? businessKey, string? limit, string? cursor, ConveyorDbContext db, CancellationToken cancellationToken)
    {
        var errors = new FieldErrors();
        var query = JobListing.Parse(status, kind, businessKey, limit, cursor, errors);
        return query is null
            ? TypedResults.ValidationProblem(errors.ToDictionary())
            : TypedResults.Ok(await JobListing.ListAsync(db, query, cancellationToken));
    }

    internal static async Task<Results<Ok<JobDetails>, ValidationProblem, ProblemHttpResult>> CancelJob(
        string jobId, JobCanceller canceller, CancellationToken cancellationToken)
    {
        if (!RouteIds.TryParse(jobId, nameof(jobId), out var id, out var invalid))
        {
            return invalid;
        }

        var result = await canceller.CancelAsync(id, cancellationToken);
        return result switch
        {
            { Status: CancelStatus.Cancelled or CancelStatus.AlreadyCancelled, Job: { } job } => TypedResults.Ok(JobDetails.From(job)),
            { Status: CancelStatus.TooLate, Job: { } job } => Problem(StatusCodes.Status409Conflict, "Job cannot be cancelled",
                $"Job {id} is {job.Status}; only queued or scheduled jobs can be cancelled."),
            _ => Problem(StatusCodes.Status404NotFound, "Job not found", $"There is no job {id}."),
        };
    }

    private static ProblemHttpResult BodyTooLarge(int maxBodyBytes) =>
        Problem(StatusCodes.Status413PayloadTooLarge, "Request body too large",
            $"The body must be at most {maxBodyBytes} bytes.");

    private static ProblemHttpResult Problem(int status, string title, string detail) =>
        TypedResults.Problem(statusCode: status, title: title, detail: detail);
}
