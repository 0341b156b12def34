using System.Text.Json;
using System.Text.Json.Serialization;

namespace Conveyor.Api.Jobs;

/// <summary>
/// Serialization code for the jobs endpoints' answers, generated at build time: a 202 is written by
/// straight-line code instead of reflection-driven converters, on every submission. Same names and
/// formats as the reflection serializer with ASP.NET Core's web defaults (camelCase).
/// </summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(JobAccepted))]
[JsonSerializable(typeof(JobDetails))]
[JsonSerializable(typeof(JobsRunNow))]
[JsonSerializable(typeof(JobPage))]
[JsonSerializable(typeof(JobResult))]
[JsonSerializable(typeof(ReportTotal[]))]
[JsonSerializable(typeof(JobBatchAccepted))]
[JsonSerializable(typeof(JobBatchResult[]))]
internal sealed partial class JobsJson : JsonSerializerContext;
