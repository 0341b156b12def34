using Conveyor.Contracts;
using Conveyor.Storage;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;
using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;

namespace Conveyor.Api.Jobs;

/// <summary><c>POST /api/jobs/{kind}</c> submits a job; <c>GET /api/jobs/{jobId}</c> shows it.</summary>
internal static class JobsApi
{
    public const int MaxBodyBytes = 256 * 1024;

    /// <summary>Seconds a client should wait before retrying a submission the broker did not confirm.</summary>
    public const int RetryAfterSeconds = 5;

    public static IServiceCollection AddJobs(this IServiceCollection services)
    {
        services.AddSingleton(TimeProvider.System);
        services.AddScoped<JobSubmitter>();
        return services;
    }

    public static IEndpointRouteBuilder MapJobsApi(this IEndpointRouteBuilder endpoints)
    {
        var jobs = endpoints.MapGroup("/api/jobs").WithTags("Jobs");

        jobs.MapPost("/{kind}", SubmitJob)
            .WithName("SubmitJob")
            .WithSummary("Submit a job: charge-payment, deliver-webhook or generate-report.")
            .Accepts<JsonElement>("application/json")
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblem(StatusCodes.Status409Conflict)
            .ProducesProblem(StatusCodes.Status413PayloadTooLarge)
            .ProducesProblem(StatusCodes.Status415UnsupportedMediaType)
            .ProducesProblem(StatusCodes.Status422UnprocessableEntity)
            .ProducesProblem(StatusCodes.Status503ServiceUnavailable);

        jobs.MapGet("/{jobId:guid}", GetJob)
            .WithName("GetJob")
            .WithSummary("The status of a job.");

        return endpoints;
    }

    internal static async Task<Results<Accepted<JobAccepted>, ValidationProblem, ProblemHttpResult>> SubmitJob(
        string kind, HttpContext http, JobSubmitter submitter, CancellationToken cancellationToken)
    {
        var request = http.Request;
        if (!JobRequestParser.IsKnownKind(kind))
        {
            return Problem(StatusCodes.Status404NotFound, "Unknown job kind",
                $"'{kind}' is not a job kind. Known kinds: {string.Join(", ", JobKinds.All)}.");
        }

        if (!request.HasJsonContentType())
        {
            return Problem(StatusCodes.Status415UnsupportedMediaType, "Unsupported media type",
                "Send the job as a JSON body with Content-Type: application/json.");
        }

        if (request.ContentLength > MaxBodyBytes)
        {
            return BodyTooLarge();
        }

        var errors = new FieldErrors();
        var idempotencyKey = IdempotencyKey.Read(request.Headers, errors);

        var body = await RequestBody.ReadAtMostAsync(request.Body, MaxBodyBytes, cancellationToken);
        if (body is null)
        {
            return BodyTooLarge();
        }

        var job = JobRequestParser.Parse(kind, body, errors);
        if (job is null || errors.Count > 0)
        {
            return TypedResults.ValidationProblem(errors.ToDictionary());
        }

        var requestHash = Convert.ToHexStringLower(SHA256.HashData(body));
        var result = await submitter.SubmitAsync(job, idempotencyKey, requestHash, cancellationToken);

        switch (result.Status)
        {
            case SubmitStatus.Created or SubmitStatus.Duplicate when result.Job is { } row:
                return TypedResults.Accepted($"/api/jobs/{row.Id}", new JobAccepted(row.Id, row.Kind, row.Status));

            case SubmitStatus.KeyReused:
                return Problem(StatusCodes.Status422UnprocessableEntity, "Idempotency-Key reused",
                    "This Idempotency-Key was already used for a different request. Use a new key for a new job.");

            case SubmitStatus.InFlight:
                http.Response.Headers.RetryAfter = "1";
                return Problem(StatusCodes.Status409Conflict, "Submission in progress",
                    "Another request for the same job is being processed. Retry shortly.");

            case SubmitStatus.PublishFailed:
                http.Response.Headers.RetryAfter = RetryAfterSeconds.ToString(CultureInfo.InvariantCulture);
                return Problem(StatusCodes.Status503ServiceUnavailable, "Message broker unavailable",
                    "The job could not be queued. Retry later; the same Idempotency-Key may be reused.");

            default:
                throw new UnreachableException($"Submission ended {result.Status} without a job.");
        }
    }

    internal static async Task<Results<Ok<JobDetails>, ProblemHttpResult>> GetJob(
        Guid jobId, ConveyorDbContext db, CancellationToken cancellationToken)
    {
        var job = await db.Jobs.AsNoTracking().FirstOrDefaultAsync(j => j.Id == jobId, cancellationToken);
        return job is null
            ? Problem(StatusCodes.Status404NotFound, "Job not found", $"There is no job {jobId}.")
            : TypedResults.Ok(JobDetails.From(job));
    }

    private static ProblemHttpResult BodyTooLarge() =>
        Problem(StatusCodes.Status413PayloadTooLarge, "Request body too large",
            $"The body must be at most {MaxBodyBytes} bytes.");

    private static ProblemHttpResult Problem(int status, string title, string detail) =>
        TypedResults.Problem(statusCode: status, title: title, detail: detail);
}
