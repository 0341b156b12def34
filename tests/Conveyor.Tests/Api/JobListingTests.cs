using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using System.Net;
using System.Net.Http.Json;

namespace Conveyor.Tests.Api;

[Collection(ConveyorCollection.Name)]
public sealed class JobListingTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync();
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task Pages_list_every_job_once_newest_first_and_filter_by_status_and_kind()
    {
        // Created one after another: charges queued (one cancelled), reports scheduled.
        var created = new List<JobAccepted>();
        for (var i = 0; i < 4; i++)
        {
            created.Add(await _api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid())));
            var runAt = DateTimeOffset.UtcNow.AddHours(1);
            created.Add(await _api.Client.AcceptJobAsync(JobKinds.GenerateReport,
                $$"""{"reportId":"{{Guid.NewGuid()}}","runAt":"{{runAt:O}}"}"""));
        }

        var cancelledId = created[2].JobId;
        using (var cancel = await _api.Client.CancelJobAsync(cancelledId))
        {
            Assert.Equal(HttpStatusCode.OK, cancel.StatusCode);
        }

        var newestFirst = created.Select(c => c.JobId).Reverse().ToList();

        var all = await ListAllAsync("limit=2");
        Assert.Equal(newestFirst, all.Select(j => j.JobId));
        Assert.True(all.Zip(all.Skip(1)).All(p => p.First.CreatedAt >= p.Second.CreatedAt));

        var reports = await ListAllAsync("limit=2&kind=generate-report");
        Assert.Equal(created.Where(c => c.Kind == JobKinds.GenerateReport).Select(c => c.JobId).Reverse(), reports.Select(j => j.JobId));
        Assert.All(reports, j => Assert.Equal(JobStatus.Scheduled, j.Status));

        var queuedCharges = await ListAllAsync("limit=2&status=queued&kind=charge-payment");
        Assert.Equal(
            created.Where(c => c.Kind == JobKinds.ChargePayment && c.JobId != cancelledId).Select(c => c.JobId).Reverse(),
            queuedCharges.Select(j => j.JobId));

        var cancelled = Assert.Single(await ListAllAsync("status=cancelled"));
        Assert.Equal((cancelledId, JobStatus.Cancelled), (cancelled.JobId, cancelled.Status));
        Assert.Empty(await ListAllAsync("status=queued&kind=generate-report"));

        // One page when it all fits.
        var single = await _api.Client.GetFromJsonAsync<JobPage>("/api/jobs");
        Assert.Equal(newestFirst, single!.Items.Select(j => j.JobId));
        Assert.Null(single.NextCursor);
    }

    [Fact]
    public async Task A_job_is_found_by_its_kind_and_business_key_and_shows_the_key()
    {
        var paymentId = Guid.NewGuid();
        var charge = await _api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId));
        await _api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        // Another kind with the same key is another job.
        await _api.Client.AcceptJobAsync(JobKinds.GenerateReport,
            $$"""{"reportId":"{{paymentId}}","runAt":"{{DateTimeOffset.UtcNow.AddHours(1):O}}"}""");

        var found = await ListAllAsync($"kind=charge-payment&businessKey={paymentId}");

        var job = Assert.Single(found);
        Assert.Equal((charge.JobId, paymentId.ToString()), (job.JobId, job.BusinessKey));
        Assert.Empty(await ListAllAsync($"kind=charge-payment&businessKey={Guid.NewGuid()}"));
        // A UUID in upper case is the same key.
        Assert.Equal(charge.JobId, Assert.Single(await ListAllAsync($"kind=charge-payment&businessKey={paymentId.ToString().ToUpperInvariant()}")).JobId);
        Assert.Equal(paymentId.ToString(), (await _api.Client.GetJobAsync(charge.JobId)).BusinessKey);
    }

    [Theory]
    [InlineData("status=done", "status")]
    [InlineData("kind=send-email", "kind")]
    [InlineData("limit=0", "limit")]
    [InlineData("limit=501", "limit")]
    [InlineData("limit=ten", "limit")]
    [InlineData("order=latest", "order")]
    [InlineData("order=Oldest", "order")]
    [InlineData("cursor=not-a-cursor", "cursor")]
    [InlineData("cursor=AAAA", "cursor")]
    [InlineData("cursor=%00%ff", "cursor")]
    [InlineData("cursor=!!!!", "cursor")]
    [InlineData("cursor=f_________8AAAAAAAAAAAAAAAAAAAAA", "cursor")] // a time far past DateTimeOffset.MaxValue
    [InlineData("businessKey=0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11", "businessKey")] // without its kind
    [InlineData("kind=charge-payment&businessKey=", "businessKey")]
    [InlineData("kind=charge-payment&businessKey=%00", "businessKey")] // text PostgreSQL refuses
    [InlineData("kind=charge-payment&businessKey=order-42", "businessKey")] // every kind's key is a UUID
    public async Task A_bad_query_parameter_is_a_400_naming_it(string query, string field)
    {
        using var response = await _api.Client.GetAsync(new Uri($"/api/jobs?{query}", UriKind.Relative));

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal([field], await response.ReadErrorFieldsAsync());
    }

    /// <summary>A misspelt filter was ignored: <c>?stauts=dead-lettered</c> answered every job, as if no filter had been given.</summary>
    [Theory]
    [InlineData("/api/jobs?stauts=dead-lettered", "stauts", "status, kind, businessKey, limit, cursor, order")]
    [InlineData("/api/jobs?status=dead-lettered&page=2", "page", "status, kind, businessKey, limit, cursor, order")]
    [InlineData("/api/jobs/0192f1c4-6f3a-7c6e-9b1d-3c8b2f0e7a11?wait=5", "wait", "waitSeconds")]
    [InlineData("/api/jobs/0192f1c4-6f3a-7c6e-9b1d-3c8b2f0e7a11?jobId=0192f1c4-6f3a-7c6e-9b1d-3c8b2f0e7a11", "jobId", "waitSeconds")] // read from the path only
    [InlineData("/api/operations?sate=running", "sate", "queue, state, limit, before")]
    [InlineData("/api/audit?user=ops", "user", "queue, requestedBy, since, limit, before")]
    public async Task A_query_parameter_the_endpoint_does_not_read_is_a_400_naming_it_and_the_ones_it_reads(
        string pathAndQuery, string field, string accepted)
    {
        using var response = await _api.Client.GetAsync(new Uri(pathAndQuery, UriKind.Relative));

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal([field], await response.ReadErrorFieldsAsync());
        Assert.Contains($"the parameters are: {accepted}.", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    /// <summary>
    /// A request that reads nothing from its query string refuses any parameter there: a submission's
    /// <c>?runAt=</c> was ignored and the job ran at once; a cancel's <c>?reason=</c> was dropped.
    /// </summary>
    [Theory]
    [InlineData("POST", "/api/jobs/charge-payment?runAt=2030-01-01T00:00:00Z", "runAt")]
    [InlineData("POST", "/api/jobs/charge-payment/batch?dryRun=true", "dryRun")]
    [InlineData("DELETE", "/api/jobs/0192f1c4-6f3a-7c6e-9b1d-3c8b2f0e7a11?reason=duplicate", "reason")]
    [InlineData("GET", "/api/operations/0192f1c4-6f3a-7c6e-9b1d-3c8b2f0e7a11?follow=1", "follow")]
    public async Task A_query_parameter_on_a_request_that_reads_none_is_a_400_naming_it_and_nothing_is_submitted(
        string method, string pathAndQuery, string field)
    {
        var paymentId = Guid.NewGuid();
        var body = pathAndQuery.Contains("/batch", StringComparison.Ordinal)
            ? $$"""{"jobs":[{{JobRequests.ChargePayment(paymentId)}}]}"""
            : JobRequests.ChargePayment(paymentId);
        using var request = new HttpRequestMessage(new HttpMethod(method), new Uri(pathAndQuery, UriKind.Relative));
        if (method == "POST")
        {
            request.Content = new StringContent(body, System.Text.Encoding.UTF8, "application/json");
        }

        using var response = await _api.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal([field], await response.ReadErrorFieldsAsync());
        Assert.Contains("it takes none in its query string", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        var page = await _api.Client.GetFromJsonAsync<JobPage>("/api/jobs");
        Assert.Empty(page!.Items);
    }

    /// <summary>
    /// A parameter given twice is said to be given twice, as the error-queue, operation and audit endpoints say it: its
    /// values were joined to <c>queued,queued</c> and refused as no status, though each value was one.
    /// </summary>
    [Theory]
    [InlineData("/api/jobs?status=queued&status=queued", "status")]
    [InlineData("/api/jobs?limit=5&Limit=5", "limit")]
    [InlineData("/api/jobs?kind=charge-payment&kind=generate-report", "kind")]
    [InlineData("/api/jobs/0192f1c4-6f3a-7c6e-9b1d-3c8b2f0e7a11?waitSeconds=1&waitSeconds=1", "waitSeconds")]
    public async Task A_query_parameter_given_twice_is_a_400_saying_so(string pathAndQuery, string field)
    {
        using var response = await _api.Client.GetAsync(new Uri(pathAndQuery, UriKind.Relative));

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal(field, Assert.Single(await response.ReadErrorFieldsAsync()), ignoreCase: true);
        Assert.Contains("Must be given once.", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    /// <summary>Read in any casing, as Minimal APIs bind them.</summary>
    [Theory]
    [InlineData("/api/jobs?Status=dead-lettered&LIMIT=5")]
    [InlineData("/api/operations?State=running")]
    [InlineData("/api/audit?requestedby=ops&Limit=5")]
    public async Task A_parameter_the_endpoint_reads_is_taken_in_any_casing(string pathAndQuery)
    {
        using var response = await _api.Client.GetAsync(new Uri(pathAndQuery, UriKind.Relative));

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
    }

    /// <summary>Filters compared with text columns: PostgreSQL refuses a NUL there, which would be a 500.</summary>
    [Theory]
    [InlineData("/api/operations?queue=charge-payment_error%00", "queue")]
    [InlineData("/api/audit?queue=%00", "queue")]
    [InlineData("/api/audit?requestedBy=ops%00", "requestedBy")]
    public async Task A_filter_with_a_control_character_is_a_400_naming_it(string pathAndQuery, string field)
    {
        using var response = await _api.Client.GetAsync(new Uri(pathAndQuery, UriKind.Relative));

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal([field], await response.ReadErrorFieldsAsync());
    }

    [Theory]
    [InlineData("DELETE", "/api/jobs/12345", "jobId")]
    [InlineData("GET", "/api/operations/0192f1c4-6f3a-7c6e-9b1d", "operationId")]
    public async Task A_malformed_id_in_the_path_is_a_400_naming_it(string method, string path, string field)
    {
        using var request = new HttpRequestMessage(new HttpMethod(method), new Uri(path, UriKind.Relative));
        using var response = await _api.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal([field], await response.ReadErrorFieldsAsync());
    }

    [Fact]
    public async Task A_well_formed_operation_id_that_names_nothing_is_a_404()
    {
        using var response = await _api.Client.GetAsync(new Uri($"/api/operations/{Guid.NewGuid()}", UriKind.Relative));

        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
    }

    /// <summary>Follows nextCursor to the end, checking every page keeps to the limit.</summary>
    private async Task<List<JobDetails>> ListAllAsync(string query)
    {
        var jobs = new List<JobDetails>();
        string? cursor = null;
        for (var pages = 0; pages < 100; pages++)
        {
            var url = cursor is null ? $"/api/jobs?{query}" : $"/api/jobs?{query}&cursor={Uri.EscapeDataString(cursor)}";
            using var response = await _api.Client.GetAsync(new Uri(url, UriKind.Relative));
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var page = await response.Content.ReadFromJsonAsync<JobPage>();
            Assert.NotNull(page);
            if (query.Contains("limit=2", StringComparison.Ordinal))
            {
                Assert.True(page.Items.Count <= 2);
            }

            jobs.AddRange(page.Items);
            cursor = page.NextCursor;
            if (cursor is null)
            {
                return jobs;
            }
        }

        throw new InvalidOperationException("The listing never ended.");
    }
}
